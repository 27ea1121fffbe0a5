//! Tags over gRPC: a name for a stored object, refused for objects the
//! store lacks and for malformed names, the latest setting standing, and
//! surviving an index rebuild.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;

use strata_client::{ClientError, Progress};
use strata_proto::Digest;
use strata_proto::v1::RebuildIndexRequest;
use strata_proto::v1::admin_client::AdminClient;
use strata_tests::{TestServer, random_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_name_stored_objects_and_the_latest_stands() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client().await;
    let push = |seed| {
        let client = client.clone();
        async move {
            client
                .push(
                    Cursor::new(random_bytes(10_000, seed)),
                    "x",
                    &Progress::new(),
                )
                .await
                .unwrap()
                .digest
        }
    };
    let (v1, v2) = (push(1).await, push(2).await);

    assert_eq!(client.get_tag("app:v1").await.unwrap(), None);
    client.set_tag("app:v1", &v1).await.unwrap();
    client.set_tag("app:latest", &v1).await.unwrap();
    client.set_tag("app:latest", &v2).await.unwrap();
    assert_eq!(client.get_tag("app:v1").await.unwrap(), Some(v1));
    assert_eq!(client.get_tag("app:latest").await.unwrap(), Some(v2));

    let ghost = Digest::of(b"never stored");
    match client.set_tag("app:ghost", &ghost).await {
        Err(ClientError::Refused { message, .. }) => {
            assert!(message.contains("not in the store"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(client.get_tag("app:ghost").await.unwrap(), None);
    for bad in ["", "../etc", "app name", &"x".repeat(300)] {
        assert!(
            matches!(
                client.set_tag(bad, &v1).await,
                Err(ClientError::Refused { .. })
            ),
            "{bad:?} was accepted"
        );
    }

    let mut admin = AdminClient::connect(server.url.clone()).await.unwrap();
    admin.rebuild_index(RebuildIndexRequest {}).await.unwrap();
    assert_eq!(client.get_tag("app:latest").await.unwrap(), Some(v2));
    assert_eq!(client.get_tag("app:v1").await.unwrap(), Some(v1));
}
