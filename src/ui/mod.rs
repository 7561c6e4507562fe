//! The web dashboard (`clawfarm ui`, `clawfarm watch DIR --ui`): a small HTTP/1.1 server
//! on hyper that serves server-rendered pages, a JSON API under `/api/` (the shapes of
//! `-o json`), Server-Sent Events for the live views and `/metrics` for Prometheus.
//!
//! It reads the home through the same library calls as the CLI verbs (`observe`, the
//! driver's reports and logs, the store inventory, `reconcile::pass::prepare`), and its
//! actions call `reconcile::ops`, so they take the same instance locks as `clawfarm stop`
//! and run on the fake driver in tests. See `rfc/009-dashboard.md`.
//!
//! Layout: [`auth`] (token, cookie, CSRF and origin rules), [`routes`] (request → response),
//! [`views`] (the data), [`pages`] (HTML), [`metrics`] (Prometheus text), `static/` (the
//! embedded JS and CSS).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

use crate::driver::Driver;
use crate::home::Home;

pub mod auth;
pub mod metrics;
pub mod pages;
pub mod routes;
pub mod views;

/// The default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

/// Everything the server needs; shared by every connection.
pub struct Ui {
    /// The home it shows.
    pub home: Home,
    /// The driver (the same the CLI would use).
    pub driver: Arc<dyn Driver>,
    /// The access token.
    pub token: auth::Token,
    /// The watched folder, for the folder page (`watch --ui`, or `ui --dir`).
    pub dir: Option<PathBuf>,
    /// CPU samples of QEMU processes.
    pub cpu: views::CpuSampler,
}

impl std::fmt::Debug for Ui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ui")
            .field("home", &self.home)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Ui {
    /// A dashboard over `home`, with its token (created when missing).
    pub fn new(
        home: Home,
        driver: Arc<dyn Driver>,
        dir: Option<PathBuf>,
    ) -> anyhow::Result<(Self, bool)> {
        let (token, fresh) = auth::load_or_create(&home)
            .with_context(|| format!("cannot read or create {}", home.ui_token().display()))?;
        Ok((
            Ui {
                home,
                driver,
                token,
                dir,
                cpu: Default::default(),
            },
            fresh,
        ))
    }

    /// The address to open, token included (`http://ADDR/?token=…`).
    pub fn open_url(&self, addr: SocketAddr) -> String {
        let host = if addr.ip().is_unspecified() {
            format!("127.0.0.1:{}", addr.port())
        } else {
            addr.to_string()
        };
        format!("http://{host}/?token={}", self.token.value())
    }
}

/// Bind the listen address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serve until `shutdown` resolves. Each connection is its own task; live streams end
/// when their client goes away.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ui: Arc<Ui>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("dashboard: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let ui = ui.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let ui = ui.clone();
                async move { Ok::<_, Infallible>(routes::handle(ui, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
