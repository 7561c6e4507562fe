//! `clawfarm events`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::Ctx;

/// Arguments of `clawfarm events`.
#[derive(Debug, Args, Clone)]
pub struct EventsArgs {
    /// Follow: keep printing new events.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this instance (CLAWID or name prefix).
    pub name: Option<String>,
}

/// `clawfarm events`.
pub fn events(ctx: &Ctx, args: &EventsArgs) -> anyhow::Result<u8> {
    let path = ctx.home.events_log();
    let mut shown = 0usize;
    loop {
        let all = crate::state::events::read(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for e in all.iter().skip(shown).filter(|e| {
            args.name
                .as_deref()
                .is_none_or(|n| e.instance.starts_with(n))
        }) {
            outln!(
                "{}  {:<20} {:<12} {:<9} {}",
                humantime::format_rfc3339_millis(e.time),
                e.instance,
                e.action,
                e.result,
                e.message
            )?;
        }
        shown = all.len();
        if !args.follow {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
