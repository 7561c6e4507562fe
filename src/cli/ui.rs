//! `clawfarm ui`: the web dashboard as its own process (see [`crate::ui`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::bail;
use clap::Args;

use super::{Ctx, runtime};

/// Arguments of `clawfarm ui`.
#[derive(Debug, Args, Clone)]
pub struct UiArgs {
    /// Address to listen on (loopback by default; anything else exposes the dashboard to
    /// whoever can reach that address, token still required).
    #[arg(long, default_value = crate::ui::DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// A manifest folder whose pending plan and errors the Folder page shows.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Start the dashboard inside an async runtime; returns the address it listens on and the
/// server future. Shared by `ui` and `watch --ui`.
pub(super) async fn start(
    ctx: &Ctx,
    driver: Arc<dyn crate::driver::Driver>,
    listen: SocketAddr,
    dir: Option<PathBuf>,
) -> anyhow::Result<(SocketAddr, Arc<crate::ui::Ui>, tokio::net::TcpListener)> {
    if let Some(d) = &dir
        && !d.is_dir()
    {
        bail!("{} is not a folder", d.display());
    }
    let (ui, _fresh) = crate::ui::Ui::new(ctx.home.clone(), driver, dir)?;
    let listener = crate::ui::bind(listen).await?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: the dashboard listens on {addr}, not only on loopback: anyone who can reach it and has the token can stop and remove instances"
        );
    }
    Ok((addr, Arc::new(ui), listener))
}

/// `clawfarm ui`.
pub fn ui(ctx: &Ctx, args: &UiArgs) -> anyhow::Result<u8> {
    ctx.ensure_home()?;
    runtime()?.block_on(async {
        let (addr, ui, listener) = start(ctx, ctx.driver()?, args.listen, args.dir.clone()).await?;
        // The address with the token, once, on stdout (the only place it is printed).
        outln!("dashboard: {}", ui.open_url(addr))?;
        eprintln!("listening on http://{addr}/ (Ctrl-C stops the dashboard; VMs keep running)");
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        crate::ui::serve(listener, ui, shutdown).await;
        anyhow::Ok(0)
    })
}
