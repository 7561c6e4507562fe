//! One download per blob: concurrent tasks, threads with separate stores, and separate
//! processes all wanting the same blob make a single request (counted at the server).

#[path = "common/blobkit.rs"]
mod blobkit;
#[path = "common/httpd.rs"]
mod httpd;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use blobkit::*;
use clawfarm::home::Home;
use clawfarm::input::clawspec::Image;
use clawfarm::store::blob::BlobStore;
use clawfarm::store::progress::Progress;
use httpd::{Behavior, Server};

fn slow() -> Behavior {
    Behavior {
        throttle: Some((256 << 10, Duration::from_millis(40))),
        ..Behavior::default()
    }
}

fn image(url: &str, sum: &str) -> Image {
    Image {
        name: "base".into(),
        reference: url.into(),
        sha256: sum.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_share_one_download() {
    let (_d, home) = home();
    let srv = Server::start(slow());
    let body = data(4 << 20, 11);
    let sum = sha(&body);
    srv.add("/x.img", body.clone());
    let store = BlobStore::new(&home);
    let img = image(&srv.url("/x.img"), &sum);
    let p = Progress::silent();
    let (a, b, c) = tokio::join!(
        store.ensure(&img, None, &p),
        store.ensure(&img, None, &p),
        store.ensure(&img, None, &p)
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert!(c.is_ok());
    assert_eq!(srv.requests().len(), 1);
    assert_eq!(fs::read(home.blob(&sum)).unwrap(), body);
}

#[test]
fn threads_with_separate_stores_share_one_download() {
    let (_d, home) = home();
    let srv = Server::start(slow());
    let body = data(4 << 20, 12);
    let sum = sha(&body);
    srv.add("/y.img", body);
    let url = srv.url("/y.img");
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let (home, url, sum) = (home.clone(), url.clone(), sum.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    BlobStore::new(&home)
                        .ensure(&image(&url, &sum), None, &Progress::silent())
                        .await
                })
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    assert_eq!(srv.requests().len(), 1);
}

const CHILD_ENV: &str = "CLAWFARM_TEST_DEDUP_CHILD";

/// Not a test on its own: the body of the child processes of
/// `processes_share_one_download` (does nothing unless the env var is set).
#[test]
fn dedup_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut it = spec.split('|');
    let (root, url, sum) = (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    );
    let home = Home::new(PathBuf::from(root));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        BlobStore::new(&home)
            .ensure(&image(&url, &sum), None, &Progress::silent())
            .await
            .unwrap();
    });
}

#[test]
fn processes_share_one_download() {
    let (_d, home) = home();
    let srv = Server::start(slow());
    let body = data(6 << 20, 13);
    let sum = sha(&body);
    srv.add("/z.img", body.clone());
    let spec = format!("{}|{}|{}", home.root().display(), srv.url("/z.img"), sum);
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(&exe)
                .args(["dedup_child", "--exact", "--test-threads=1", "--quiet"])
                .env(CHILD_ENV, &spec)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(srv.requests().len(), 1, "{:?}", srv.requests());
    assert_eq!(fs::read(home.blob(&sum)).unwrap(), body);
    assert!(!BlobStore::new(&home).part_path(&sum).exists());
}
