//! `clawfarm watch DIR`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::{Ctx, apply_lock, load_desired, runtime};
use crate::desired::Desired;
use crate::reconcile::watch::{Debouncer, PassRunner, WatchConfig, watch_folder};
use crate::state::events::EventSink;

/// Arguments of `clawfarm watch`.
#[derive(Debug, Args, Clone)]
pub struct WatchArgs {
    /// The manifest folder (a git checkout, typically).
    pub dir: PathBuf,
    /// Periodic resync interval (catches drift no event reports).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub resync: Duration,
    /// Quiet time after the last file event before reconciling.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
    /// Delete instances whose manifest is gone (off by default: removing a file from
    /// the folder does not delete a VM unless asked; volumes are kept either way).
    #[arg(long)]
    pub prune: bool,
    /// Actions run at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallelism: u16,
    /// How long to wait for another apply/watch's lock (default 0: refuse at once).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub lock_timeout: Duration,
    /// Also serve the web dashboard (see `clawfarm ui`), with this folder's plan on its
    /// Folder page.
    #[arg(long)]
    pub ui: bool,
    /// Where the dashboard listens (with --ui).
    #[arg(long, requires = "ui", default_value = crate::ui::DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
}

/// Loads the watched folder for each pass (never prompting).
struct FolderRunner {
    ctx: Ctx,
    dir: PathBuf,
    /// Parsed manifests, so that a pass re-parses only the files that changed.
    cache: crate::input::manifest::Cache,
}

#[async_trait::async_trait]
impl PassRunner for FolderRunner {
    async fn desired(&mut self) -> Desired {
        match load_desired(
            &self.ctx,
            std::slice::from_ref(&self.dir),
            false,
            Some(&self.cache),
            false,
        )
        .await
        {
            Ok(d) => d,
            Err(e) => {
                // Nothing is known about the folder this pass: nothing may be pruned.
                tracing::error!("{e:#}");
                Desired {
                    incomplete: true,
                    ..Desired::default()
                }
            }
        }
    }
}

/// `clawfarm watch`.
pub fn watch(ctx: &Ctx, args: WatchArgs) -> anyhow::Result<u8> {
    let mut cfg = WatchConfig::new(args.dir);
    cfg.resync = args.resync;
    cfg.debounce = args.debounce;
    cfg.prune = args.prune;
    cfg.parallelism = args.parallelism.into();
    ctx.ensure_home()?;
    if !cfg.dir.is_dir() {
        bail!("{} is not a folder", cfg.dir.display());
    }
    let home = &ctx.home;
    let driver = ctx.driver()?;
    let _lock = apply_lock(home, Some(args.lock_timeout))
        .context("another clawfarm apply or watch is running on this home")?;
    crate::reconcile::pass::sweep_temp_files(home);
    let rt = runtime()?;
    let stats = rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _w = watch_folder(&cfg.dir, tx)
            .with_context(|| format!("cannot watch {}", cfg.dir.display()))?;
        let files = Debouncer::new(rx, cfg.debounce, cfg.max_delay);
        let mut runner = FolderRunner {
            ctx: ctx.clone(),
            dir: cfg.dir.clone(),
            cache: Default::default(),
        };
        let server = if args.ui {
            let (addr, ui, listener) =
                super::ui::start(ctx, driver.clone(), args.listen, Some(cfg.dir.clone())).await?;
            outln!("dashboard: {}", ui.open_url(addr))?;
            tracing::info!(%addr, "dashboard listening");
            Some(tokio::spawn(crate::ui::serve(listener, ui, std::future::pending())))
        } else {
            None
        };
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        tracing::info!(dir = %cfg.dir.display(), resync = ?cfg.resync, prune = cfg.prune, "watching");
        let stats = crate::reconcile::watch::run(
                home,
                driver,
                &cfg,
                &mut runner,
                files,
                EventSink::to_file(home.events_log()),
                shutdown,
            )
            .await;
        if let Some(s) = server {
            s.abort();
        }
        anyhow::Ok(stats)
    })?;
    tracing::info!(
        passes = stats.total(),
        restarts = stats.restarts,
        "watch stopped; VMs left running"
    );
    Ok(0)
}
