//! Requests → responses: authentication first (every path), then the pages, the JSON API,
//! the live streams (SSE), the actions (POST, CSRF-checked) and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::mpsc;

use super::auth::{self, COOKIE, CSRF_HEADER};
use super::views::{self, POLL};
use super::{Ui, pages};
use crate::reconcile::ops;

/// The response body of every route.
pub type Body = BoxBody<Bytes, Infallible>;

const JS: &str = include_str!("static/app.js");
const CSS: &str = include_str!("static/app.css");
/// Largest accepted request body.
const MAX_BODY: usize = 16 * 1024;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn respond(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(ctype).expect("static content type"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    r
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    respond(status, "text/html; charset=utf-8", body)
}

fn json_response(status: StatusCode, v: &(impl serde::Serialize + ?Sized)) -> Response<Body> {
    respond(
        status,
        "application/json",
        serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"null".to_vec()),
    )
}

fn api_error(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({ "error": msg.into() }))
}

/// Minimal `%XX` and `+` decoding of a query value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| decode(v))
    })
}

fn hdr(req: &Request<Incoming>, name: impl header::AsHeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// How a request proved it may come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Authed {
    /// The session cookie (a browser: CSRF rules apply).
    Cookie,
    /// `Authorization: Bearer` (a script: no ambient credential, no CSRF risk).
    Bearer,
}

fn authenticate(ui: &Ui, req: &Request<Incoming>) -> Option<Authed> {
    if let Some(b) = hdr(req, header::AUTHORIZATION).and_then(|h| h.strip_prefix("Bearer "))
        && ui.token.matches(b.trim())
    {
        return Some(Authed::Bearer);
    }
    if let Some(c) = hdr(req, header::COOKIE).and_then(|h| auth::cookie(h, COOKIE))
        && ui.token.matches(c)
    {
        return Some(Authed::Cookie);
    }
    None
}

fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/sse/") || path == "/metrics"
}

fn unauthorized(path: &str) -> Response<Body> {
    let mut r = if is_api(path) {
        api_error(
            StatusCode::UNAUTHORIZED,
            "a token is needed: Authorization: Bearer TOKEN (the token is in ui.token in the clawfarm home)",
        )
    } else {
        html(StatusCode::UNAUTHORIZED, pages::unauthorized())
    };
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"clawfarm\""),
    );
    r
}

/// A CLAWID, name or prefix as it may appear in a path.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Handle one request.
pub async fn handle(ui: Arc<Ui>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    // `?token=` once: keep it as a cookie and drop it from the address bar.
    if let Some(t) = query(&req, "token") {
        if req.method() == Method::GET && ui.token.matches(&t) {
            let mut r = respond(StatusCode::SEE_OTHER, "text/plain", "");
            // Only a path on this server: `//host/…` would send the browser elsewhere.
            let to = if path.starts_with("//") || path.contains('\\') {
                "/"
            } else {
                path.as_str()
            };
            let h = r.headers_mut();
            h.insert(
                header::LOCATION,
                HeaderValue::from_str(to).unwrap_or(HeaderValue::from_static("/")),
            );
            h.insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&auth::set_cookie(&ui.token)).expect("cookie is ASCII"),
            );
            return r;
        }
        return unauthorized(&path);
    }
    let Some(how) = authenticate(&ui, &req) else {
        return unauthorized(&path);
    };
    let method = req.method().clone();
    if method == Method::POST {
        if how == Authed::Cookie {
            let same = auth::same_origin(
                hdr(&req, header::HOST),
                hdr(&req, header::ORIGIN),
                hdr(&req, header::REFERER),
                hdr(&req, "sec-fetch-site"),
            );
            if !same {
                return api_error(StatusCode::FORBIDDEN, "cross-site request refused");
            }
            if !hdr(&req, CSRF_HEADER).is_some_and(|c| ui.token.csrf_matches(c)) {
                return api_error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
            }
        }
        return post(ui, req, &path).await;
    }
    if method != Method::GET && method != Method::HEAD {
        return api_error(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    get(ui, req, &path).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("dashboard worker panicked")
}

async fn get(ui: Arc<Ui>, req: Request<Incoming>, path: &str) -> Response<Body> {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let csrf = ui.token.csrf().to_string();
    match seg.as_slice() {
        [""] => {
            let u = ui.clone();
            let (rows, errors) =
                blocking(move || views::instances(&u.home, &*u.driver, &u.cpu)).await;
            html(
                StatusCode::OK,
                pages::instances(&csrf, &rows, &errors, ui.dir.is_some()),
            )
        }
        ["i", id] if valid_id(id) => {
            let (u, id2) = (ui.clone(), id.to_string());
            match blocking(move || views::instance_detail(&u.home, &*u.driver, &id2, &u.cpu, None))
                .await
            {
                Ok(d) => html(StatusCode::OK, pages::instance(&csrf, &d, ui.dir.is_some())),
                Err(e) => html(
                    StatusCode::NOT_FOUND,
                    pages::not_found(&e.to_string(), ui.dir.is_some()),
                ),
            }
        }
        ["folder"] => match folder(&ui).await {
            Ok(f) => html(StatusCode::OK, pages::folder(&csrf, f.as_ref())),
            Err(e) => html(
                StatusCode::INTERNAL_SERVER_ERROR,
                pages::not_found(&format!("{e:#}"), true),
            ),
        },
        ["images"] => {
            let u = ui.clone();
            let items = blocking(move || crate::observe::image_rows(&u.home)).await;
            html(
                StatusCode::OK,
                pages::images(&csrf, &items, ui.dir.is_some()),
            )
        }
        ["static", "app.js"] => respond(StatusCode::OK, "text/javascript; charset=utf-8", JS),
        ["static", "app.css"] => respond(StatusCode::OK, "text/css; charset=utf-8", CSS),
        ["metrics"] => {
            let u = ui.clone();
            let text = blocking(move || {
                let (rows, _) = views::instances(&u.home, &*u.driver, &u.cpu);
                let items = crate::store::bundle::list(&u.home);
                let events = crate::state::events::read(&u.home.events_log()).unwrap_or_default();
                super::metrics::render(&rows, &items, &events)
            })
            .await;
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }
        ["api", "instances"] => {
            let u = ui.clone();
            let (rows, _) = blocking(move || views::instances(&u.home, &*u.driver, &u.cpu)).await;
            json_response(StatusCode::OK, &rows)
        }
        ["api", "instances", id] if valid_id(id) => {
            let (u, id2) = (ui.clone(), id.to_string());
            match blocking(move || views::instance_detail(&u.home, &*u.driver, &id2, &u.cpu, None))
                .await
            {
                Ok(d) => json_response(StatusCode::OK, &d),
                Err(e) => api_error(StatusCode::NOT_FOUND, e.to_string()),
            }
        }
        ["api", "instances", id, "logs", which] if valid_id(id) => {
            let Some(kind) = views::log_kind(which) else {
                return api_error(
                    StatusCode::NOT_FOUND,
                    format!("no log {which:?} (serial or qemu)"),
                );
            };
            let offset = query(&req, "offset")
                .and_then(|o| o.parse().ok())
                .unwrap_or(0u64);
            let (u, id2) = (ui.clone(), id.to_string());
            match blocking(move || {
                let r = crate::observe::find_record(&u.home, &id2)?;
                let p = u.driver.log_path(&r.clawid, kind);
                anyhow::Ok(views::read_from(&p, offset, 256 * 1024))
            })
            .await
            {
                Ok((text, offset, reset)) => json_response(
                    StatusCode::OK,
                    &json!({"text": text, "offset": offset, "reset": reset}),
                ),
                Err(e) => api_error(StatusCode::NOT_FOUND, format!("{e:#}")),
            }
        }
        ["api", "images"] => {
            let u = ui.clone();
            json_response(
                StatusCode::OK,
                &blocking(move || crate::observe::image_rows(&u.home)).await,
            )
        }
        ["api", "folder"] => match folder(&ui).await {
            Ok(Some(f)) => json_response(StatusCode::OK, &f),
            Ok(None) => api_error(
                StatusCode::NOT_FOUND,
                "no folder is watched (clawfarm watch DIR --ui, or clawfarm ui --dir DIR)",
            ),
            Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        },
        ["api", "events"] => {
            let u = ui.clone();
            let inst = query(&req, "instance");
            let evs = blocking(move || {
                crate::state::events::read(&u.home.events_log()).unwrap_or_default()
            })
            .await;
            let mine: Vec<_> = evs
                .into_iter()
                .filter(|e| inst.as_deref().is_none_or(|i| e.instance.starts_with(i)))
                .collect();
            let from = mine.len().saturating_sub(500);
            json_response(StatusCode::OK, &mine[from..].to_vec())
        }
        ["sse", "instances"] => sse_instances(ui),
        ["sse", "instances", id] if valid_id(id) => sse_instance(ui, id.to_string()),
        _ => {
            if is_api(path) {
                api_error(StatusCode::NOT_FOUND, "no such endpoint")
            } else {
                html(
                    StatusCode::NOT_FOUND,
                    pages::not_found("no such page", ui.dir.is_some()),
                )
            }
        }
    }
}

async fn folder(ui: &Arc<Ui>) -> anyhow::Result<Option<views::FolderView>> {
    let Some(dir) = ui.dir.clone() else {
        return Ok(None);
    };
    let u = ui.clone();
    // Loading resolves bundles through the store and may block; keep it off the async
    // threads, with its own small runtime for the async loader.
    blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(views::folder(&u.home, &*u.driver, &dir))
            .map(Some)
    })
    .await
}

/// A body fed by a channel: one SSE stream.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = respond(StatusCode::OK, "text/event-stream", "");
    *r.body_mut() = ChannelBody(rx).boxed();
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

fn sse_event(name: &str, data: &str) -> Bytes {
    let mut s = format!("event: {name}\n");
    for l in data.lines() {
        s.push_str("data: ");
        s.push_str(l);
        s.push('\n');
    }
    if data.is_empty() {
        s.push_str("data: \n");
    }
    s.push('\n');
    Bytes::from(s)
}

/// `instances` events: the table, whenever it changes (and a comment every 15 s so
/// proxies keep the stream open). Ends when the client goes away.
fn sse_instances(ui: Arc<Ui>) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut last = String::new();
        let mut quiet = Duration::ZERO;
        loop {
            let u = ui.clone();
            let (rows, errors) =
                blocking(move || views::instances(&u.home, &*u.driver, &u.cpu)).await;
            let data = serde_json::to_string(&json!({"instances": rows, "errors": errors}))
                .unwrap_or_default();
            if data != last {
                if tx.send(sse_event("instances", &data)).await.is_err() {
                    return;
                }
                last = data;
                quiet = Duration::ZERO;
            } else if quiet >= Duration::from_secs(15) {
                if tx
                    .send(Bytes::from_static(b": keep-alive\n\n"))
                    .await
                    .is_err()
                {
                    return;
                }
                quiet = Duration::ZERO;
            }
            tokio::time::sleep(POLL).await;
            quiet += POLL;
        }
    });
    sse_response(rx)
}

/// One instance, live: `detail` (row, boot timeline, events) when it changes, and `serial`
/// (new console output, `reset` when a new boot truncated it).
fn sse_instance(ui: Arc<Ui>, id: String) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let mut last = String::new();
        let mut offset = 0u64;
        let mut quiet = Duration::ZERO;
        let mut previous: Option<views::InstanceDetail> = None;
        loop {
            let (u, id2, prev) = (ui.clone(), id.clone(), previous.take());
            let step = blocking(move || {
                let d = views::instance_detail(&u.home, &*u.driver, &id2, &u.cpu, prev.as_ref())?;
                let p = u
                    .driver
                    .log_path(&d.instance.row.clawid, crate::driver::LogKind::Serial);
                let serial = views::read_from(&p, offset, 256 * 1024);
                Ok::<_, crate::observe::LookupError>((d, serial))
            })
            .await;
            let mut sent = false;
            match step {
                Ok((d, (text, new_offset, reset))) => {
                    let data = serde_json::to_string(&d).unwrap_or_default();
                    if data != last {
                        if tx.send(sse_event("detail", &data)).await.is_err() {
                            return;
                        }
                        last = data;
                        sent = true;
                    }
                    if !text.is_empty() || reset {
                        let v = json!({"text": text, "reset": reset});
                        if tx.send(sse_event("serial", &v.to_string())).await.is_err() {
                            return;
                        }
                        sent = true;
                    }
                    offset = new_offset;
                    previous = Some(d);
                }
                Err(e) => {
                    let _ = tx
                        .send(sse_event(
                            "gone",
                            &json!({"error": e.to_string()}).to_string(),
                        ))
                        .await;
                    return;
                }
            }
            if sent {
                quiet = Duration::ZERO;
            } else if quiet >= Duration::from_secs(15) {
                if tx
                    .send(Bytes::from_static(b": keep-alive\n\n"))
                    .await
                    .is_err()
                {
                    return;
                }
                quiet = Duration::ZERO;
            }
            tokio::time::sleep(POLL).await;
            quiet += POLL;
        }
    });
    sse_response(rx)
}

/// The body of an action.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ActionBody {
    /// `rm` only: also delete the volumes.
    purge: bool,
    /// `rm` with `purge`: the instance's name, typed again (the second confirmation).
    confirm: Option<String>,
    /// `checkpoint` (optional: a time-based tag) and `restore` (required): the tag.
    tag: Option<String>,
}

async fn post(ui: Arc<Ui>, req: Request<Incoming>, path: &str) -> Response<Body> {
    let seg: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(String::from)
        .collect();
    let (id, verb) = match seg
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["api", "instances", id, verb] if valid_id(id) => (id.to_string(), verb.to_string()),
        _ => return api_error(StatusCode::NOT_FOUND, "no such action"),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return api_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let args: ActionBody = if body.iter().all(|b| b.is_ascii_whitespace()) {
        ActionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => return api_error(StatusCode::BAD_REQUEST, format!("bad request body: {e}")),
        }
    };
    if verb != "rm" && (args.purge || args.confirm.is_some()) {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!("{verb} takes no purge or confirm"),
        );
    }
    if let Some(tag) = &args.tag {
        if verb != "checkpoint" && verb != "restore" {
            return api_error(StatusCode::BAD_REQUEST, format!("{verb} takes no tag"));
        }
        if let Err(e) = crate::driver::check_tag(tag) {
            return api_error(StatusCode::BAD_REQUEST, format!("{e:#}"));
        }
    }
    let by = "clawfarm ui";
    let (home, driver) = (ui.home.clone(), ui.driver.clone());
    let result: anyhow::Result<String> = match verb.as_str() {
        "stop" => ops::stop(&home, &*driver, &id, by, ops::quiet())
            .await
            .map(|(r, outcome)| format!("{} stopped ({outcome})", r.clawid)),
        "start" => start(&ui, &id).await,
        "restart" => match crate::observe::find_record(&home, &id) {
            Err(e) => Err(e.into()),
            Ok(r) => {
                let running = driver.live_runtime(&r).is_some();
                let stopped = if running {
                    ops::stop(&home, &*driver, &id, by, ops::quiet())
                        .await
                        .map(|_| ())
                } else {
                    Ok(())
                };
                match stopped {
                    Ok(()) => start(&ui, &id)
                        .await
                        .map(|m| m.replace("started", "restarted")),
                    Err(e) => Err(e),
                }
            }
        },
        "rm" => {
            if args.purge {
                let name = match crate::observe::find_record(&home, &id) {
                    Ok(r) => r.name,
                    Err(e) => return api_error(StatusCode::NOT_FOUND, e.to_string()),
                };
                if args.confirm.as_deref() != Some(name.as_str()) {
                    return api_error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "removing with its volumes needs a second confirmation: send confirm = the instance name ({name})"
                        ),
                    );
                }
            }
            ops::remove(&home, &*driver, &id, true, args.purge, by, ops::quiet())
                .await
                .map(|r| {
                    format!(
                        "{} removed{}",
                        r.clawid,
                        if args.purge { " with its volumes" } else { "" }
                    )
                })
        }
        "checkpoint" => {
            let tag = args.tag.clone().unwrap_or_else(crate::driver::default_tag);
            ops::checkpoint(&home, &*driver, &id, &tag, by, ops::quiet())
                .await
                .map(|(r, c)| format!("{} checkpoint {} taken", r.clawid, c.tag))
        }
        "restore" => {
            let Some(tag) = args.tag.clone() else {
                return api_error(StatusCode::BAD_REQUEST, "restore needs a tag");
            };
            ops::restore(&home, &*driver, &id, &tag, by, ops::quiet())
                .await
                .map(|r| format!("{} restored to {tag}", r.clawid))
        }
        "suspend" => ops::suspend(&home, &*driver, &id, by, ops::quiet())
            .await
            .map(|(r, took)| {
                format!(
                    "{} suspended in {:.1}s (start resumes it)",
                    r.clawid,
                    took.as_secs_f64()
                )
            }),
        other => {
            return api_error(
                StatusCode::NOT_FOUND,
                format!(
                    "no action {other:?} (start, stop, restart, rm, checkpoint, restore, suspend)"
                ),
            );
        }
    };
    match result {
        Ok(message) => json_response(StatusCode::OK, &json!({"ok": true, "message": message})),
        Err(e) => {
            let status = if e.downcast_ref::<crate::observe::LookupError>().is_some() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::CONFLICT
            };
            api_error(status, format!("{e:#}"))
        }
    }
}

/// Start, then wait for the guest in the background (the record says when it is ready).
async fn start(ui: &Arc<Ui>, id: &str) -> anyhow::Result<String> {
    let r = ops::start(&ui.home, &*ui.driver, id, "clawfarm ui", ops::quiet()).await?;
    let (home, driver, rec) = (ui.home.clone(), ui.driver.clone(), r.clone());
    tokio::spawn(async move {
        if let Err(e) = ops::wait_ready(&home, &*driver, &rec).await {
            tracing::warn!("{e:#}");
        }
    });
    Ok(format!("{} started", r.clawid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_and_ids() {
        assert_eq!(decode("a%20b+c"), "a b c");
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("%é"), "%é");
        assert!(valid_id("alpha-1a2b"));
        assert!(!valid_id("../x"));
        assert!(!valid_id("a b"));
        assert!(!valid_id(""));
        assert_eq!(
            sse_event("x", "a\nb"),
            Bytes::from_static(b"event: x\ndata: a\ndata: b\n\n")
        );
    }
}
