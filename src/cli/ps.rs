//! `clawfarm ps`.

use std::time::SystemTime;

use clap::Args;

use super::{Ctx, Output, error_chain, print_table};
use crate::observe;

/// Arguments of `clawfarm ps`.
#[derive(Debug, Args, Clone)]
pub struct PsArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

fn ago(t: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(t)
        .unwrap_or_default()
        .as_secs();
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// `clawfarm ps`.
pub fn ps(ctx: &Ctx, args: &PsArgs) -> anyhow::Result<u8> {
    let driver = ctx.driver()?;
    let (rows, errors) = observe::rows(&ctx.home, &*driver);
    for e in &errors {
        eprintln!("warning: {}", error_chain(e));
    }
    match args.output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&rows)?)?,
        Output::Text => {
            let mut t = vec![
                [
                    "CLAWID",
                    "NAME",
                    "STATUS",
                    "GATEWAY",
                    "PID",
                    "UPDATED",
                    "LAST_ERROR",
                ]
                .map(String::from),
            ];
            for r in &rows {
                let mut err = r.last_error.clone().unwrap_or_default().replace('\n', " ");
                if err.chars().count() > 80 {
                    err = err.chars().take(77).collect::<String>() + "...";
                }
                t.push([
                    r.clawid.clone(),
                    r.name.clone(),
                    r.status.clone(),
                    r.gateway.clone().unwrap_or_else(|| "-".into()),
                    r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    ago(r.updated),
                    err,
                ]);
            }
            print_table(&t)?;
        }
    }
    Ok(0)
}
