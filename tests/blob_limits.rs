//! The image size limit (`CLAWFARM_MAX_IMAGE_BYTES`): an HTTP download over it, a `file://`
//! copy over it, and `file:///dev/zero` all end with an error and store nothing. One test in
//! its own binary, since it sets the variable for the process.

#[path = "common/blobkit.rs"]
mod blobkit;
#[path = "common/httpd.rs"]
mod httpd;

use blobkit::*;
use clawfarm::input::clawspec::Image;
use clawfarm::store::blob::BlobStore;
use clawfarm::store::part::BlobError;
use clawfarm::store::progress::Progress;
use httpd::{Behavior, Server};

fn image(reference: &str, sha256: &str) -> Image {
    Image {
        name: "base".into(),
        reference: reference.into(),
        sha256: sha256.into(),
    }
}

#[tokio::test]
async fn images_over_the_limit_or_not_regular_files_are_refused() {
    // SAFETY: the only test of this binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("CLAWFARM_MAX_IMAGE_BYTES", (1u64 << 20).to_string()) };
    let (d, home) = home();
    let store = BlobStore::new(&home);

    let srv = Server::start(Behavior::default());
    let body = data(3 << 20, 3);
    srv.add("/big.img", body.clone());
    let err = store
        .ensure(
            &image(&srv.url("/big.img"), &sha(&body)),
            None,
            &Progress::silent(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("big.img"), "{err}");

    let src = d.path().join("big.img");
    std::fs::write(&src, &body).unwrap();
    let err = store
        .ensure(
            &image(&format!("file://{}", src.display()), &sha(&body)),
            None,
            &Progress::silent(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::TooLarge { .. }), "{err:?}");

    let err = store
        .ensure(
            &image("file:///dev/zero", &sha(b"")),
            None,
            &Progress::silent(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    assert_nothing_left(&home);

    // Under the limit it still works.
    let small = data(512 << 10, 4);
    srv.add("/small.img", small.clone());
    store
        .ensure(
            &image(&srv.url("/small.img"), &sha(&small)),
            None,
            &Progress::silent(),
        )
        .await
        .unwrap();
}
