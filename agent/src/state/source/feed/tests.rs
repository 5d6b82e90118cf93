//! The wire format: frames survive the trip, and what a broken or hostile
//! peer sends is an error, not an allocation or a hang.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::wire::{self, Changes, Frame, Identity, ObjectChange, WireError};

fn changes() -> Frame {
    Frame::Changes(Changes {
        revision: 7,
        identities: vec![Identity {
            id: 3,
            namespace: "apps".into(),
            service_account: "api".into(),
            workload: "api".into(),
            labels: BTreeMap::from([("app".into(), "api".into())]),
            enrolled: true,
        }],
        objects: vec![ObjectChange {
            kind: "Namespace".into(),
            namespace: String::new(),
            name: "apps".into(),
            object: Some(Arc::new(json!({ "metadata": { "name": "apps" } }))),
        }],
        addresses: vec![
            ("10.0.0.1".parse().unwrap(), Some(3)),
            ("fd00::1".parse().unwrap(), None),
        ],
        forgotten: vec![1, 2],
    })
}

#[tokio::test]
async fn frames_survive_the_trip() {
    let frames = [
        Frame::Hello {
            token: "t".into(),
            node: "n".into(),
            resume: None,
        },
        Frame::Hello {
            token: "t".into(),
            node: "n".into(),
            resume: Some(wire::Position {
                epoch: u64::MAX,
                revision: 6,
            }),
        },
        Frame::Reset,
        Frame::Resumed { revision: 6 },
        changes(),
        Frame::Synced {
            revision: 7,
            epoch: u64::MAX,
        },
        Frame::Heartbeat {
            revision: 7,
            behind_ms: 0,
        },
    ];
    let mut bytes = Vec::new();
    for frame in &frames {
        wire::write_frame(&mut bytes, frame).await.unwrap();
    }
    let mut reader = bytes.as_slice();
    for frame in &frames {
        let read = wire::read_frame(&mut reader, wire::MAX_FRAME)
            .await
            .unwrap();
        assert_eq!(read.as_ref(), Some(frame));
    }
    assert_eq!(
        wire::read_frame(&mut reader, wire::MAX_FRAME)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_length_over_the_limit_is_refused_before_reading_it() {
    // Claims 1 GiB and sends nothing more.
    let bytes = (1u32 << 30).to_be_bytes();
    let error = wire::read_frame(&mut bytes.as_slice(), 64 * 1024)
        .await
        .unwrap_err();
    assert!(
        matches!(error, WireError::TooLarge(n) if n == 1 << 30),
        "{error}"
    );
}

#[tokio::test]
async fn truncated_and_malformed_frames_are_errors() {
    let mut bytes = wire::encode(&changes()).unwrap();
    bytes.truncate(bytes.len() - 3);
    let error = wire::read_frame(&mut bytes.as_slice(), wire::MAX_FRAME)
        .await
        .unwrap_err();
    assert!(matches!(error, WireError::Io(_)), "{error}");

    let mut garbage = 5u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(b"{oops");
    let error = wire::read_frame(&mut garbage.as_slice(), wire::MAX_FRAME)
        .await
        .unwrap_err();
    assert!(matches!(error, WireError::Malformed(_)), "{error}");

    let mut unknown = Vec::new();
    let body = br#"{"type":"launch","missiles":3}"#;
    unknown.extend_from_slice(&(body.len() as u32).to_be_bytes());
    unknown.extend_from_slice(body);
    let error = wire::read_frame(&mut unknown.as_slice(), wire::MAX_FRAME)
        .await
        .unwrap_err();
    assert!(matches!(error, WireError::Malformed(_)), "{error}");
}
