//! `clawfarm import`, `images` and `gc`: the bundle and blob store.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::{Ctx, Output, apply_lock, error_chain, print_table, runtime};
use crate::state::record::Record;
use crate::util::text::human_bytes;

/// Arguments of `clawfarm import`.
#[derive(Debug, Args, Clone)]
pub struct ImportArgs {
    /// The `.clawbox` bundle (tar.gz, or a plain JSON clawspec).
    pub bundle: PathBuf,
    /// Only record the bundle: do not fetch the images it refers to (`images` lists them as
    /// missing; `run` and `apply` fetch them).
    #[arg(long)]
    pub no_fetch: bool,
}

/// Arguments of `clawfarm images`.
#[derive(Debug, Args, Clone)]
pub struct ImagesArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

/// Arguments of `clawfarm gc`.
#[derive(Debug, Args, Clone)]
pub struct GcArgs {
    /// Only show what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for a running apply/watch (default: forever).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lock_timeout: Option<Duration>,
}

/// `clawfarm import`.
pub fn import(ctx: &Ctx, args: &ImportArgs) -> anyhow::Result<u8> {
    ctx.ensure_home()?;
    let b = runtime()?.block_on(crate::store::bundle::import(
        &ctx.home,
        &args.bundle,
        &crate::store::progress::Progress::stderr(),
    ))?;
    outln!(
        "{} {} ({})",
        b.digest,
        b.clawspec.name,
        if b.fresh {
            "imported"
        } else {
            "already imported"
        }
    )?;
    if args.no_fetch {
        return Ok(0);
    }
    // Every image the box refers to outside itself (its base, a remote run image), fetched
    // and verified now, so that `run` and `apply` work offline afterwards. Images inside the
    // box (`clawbox:///…`) were stored by the import.
    let driver = ctx.driver()?;
    for img in &b.clawspec.image {
        if matches!(
            crate::input::image_ref::parse_ref(&img.reference),
            Ok(crate::input::image_ref::ImageSource::Clawbox(_))
        ) {
            continue;
        }
        let stored = ctx.home.blob(&img.sha256).is_file();
        if !stored {
            runtime()?
                .block_on(driver.fetch_blob(img))
                .with_context(|| format!("image {:?} of {}", img.name, b.clawspec.name))?;
        }
        outln!(
            "  image {} {} ({})",
            img.name,
            crate::util::text::short(&img.sha256),
            if stored { "already stored" } else { "fetched" }
        )?;
    }
    Ok(0)
}

/// `clawfarm images`.
pub fn images(ctx: &Ctx, args: &ImagesArgs) -> anyhow::Result<u8> {
    match args.output {
        Output::Json => {
            let rows = crate::observe::image_rows(&ctx.home);
            outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        }
        Output::Text => {
            let items = crate::store::bundle::list(&ctx.home);
            let (records, _) = Record::read_all(&ctx.home);
            let users = crate::observe::image_users(&items, &records);
            let mut t =
                vec![["KIND", "DIGEST", "NAME", "SIZE", "USED BY", "MISSING"].map(String::from)];
            for it in &items {
                let used = users.get(&it.digest).cloned().unwrap_or_default();
                let missing: Vec<&str> = it
                    .missing(&ctx.home)
                    .into_iter()
                    .map(crate::util::text::short)
                    .collect();
                t.push([
                    format!("{:?}", it.kind).to_lowercase(),
                    crate::util::text::short(&it.digest).to_string(),
                    it.name.clone().unwrap_or_else(|| "-".into()),
                    human_bytes(it.size),
                    if used.is_empty() {
                        "-".into()
                    } else {
                        used.join(",")
                    },
                    if missing.is_empty() {
                        "-".into()
                    } else {
                        missing.join(",")
                    },
                ]);
            }
            print_table(&t)?;
        }
    }
    Ok(0)
}

/// `clawfarm gc`.
pub fn gc(ctx: &Ctx, args: &GcArgs) -> anyhow::Result<u8> {
    ctx.ensure_home()?;
    // Under the apply lock: no apply can be importing or planning on what we remove.
    let _lock = apply_lock(&ctx.home, args.lock_timeout)?;
    let (records, errors) = Record::read_all(&ctx.home);
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {}", error_chain(e));
        }
        bail!("refusing to collect garbage while some records cannot be read");
    }
    let referenced = records.iter().map(|r| r.build.bundle.clone()).collect();
    let rep = crate::store::bundle::gc(&ctx.home, &referenced, args.dry_run);
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for it in &rep.removed {
        outln!(
            "{verb} {} {} ({})",
            format!("{:?}", it.kind).to_lowercase(),
            it.digest,
            human_bytes(it.size)
        )?;
    }
    for p in &rep.temp {
        outln!("{verb} leftover {}", p.display())?;
    }
    for f in &rep.failures {
        eprintln!("error: {f:?}");
    }
    outln!(
        "{} {}, kept {} item(s)",
        verb,
        human_bytes(rep.freed_bytes),
        rep.kept.len()
    )?;
    Ok(if rep.failures.is_empty() { 0 } else { 1 })
}
