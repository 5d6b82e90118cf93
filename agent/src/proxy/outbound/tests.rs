use std::collections::HashMap;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::*;
use crate::state::{EndpointGroup, Labels, Service, ServicePort, TargetPort};

fn workload(name: &str, ip: &str, enrolled: bool) -> Workload {
    Workload {
        uid: format!("uid-{name}"),
        name: name.into(),
        namespace: "default".into(),
        service_account: "default".into(),
        node: "node0".into(),
        ips: vec![ip.parse().unwrap()],
        labels: Labels::default(),
        enrolled,
    }
}

fn snapshot() -> Snapshot {
    let svc = |name: &str, vip: &str, endpoints: Vec<EndpointGroup>| {
        Service::new(
            name.into(),
            "default".into(),
            vec![vip.parse().unwrap()],
            vec![ServicePort {
                name: None,
                port: 80,
                target: TargetPort::Number(8080),
                app_protocol: None,
            }],
            endpoints,
        )
    };
    let ep = |ip: &str, ready| {
        EndpointGroup::new([(ip.parse().unwrap(), ready)], std::sync::Arc::new([]))
    };
    Snapshot::new(
        vec![
            workload("mesh", "10.244.0.2", true),
            workload("plain", "10.244.0.3", false),
        ],
        vec![
            svc("to-mesh", "10.96.0.1", vec![ep("10.244.0.2", true)]),
            svc("empty", "10.96.0.2", vec![ep("10.244.0.3", false)]),
        ],
        HashMap::new(),
        Default::default(),
    )
}

fn dst(s: &str) -> OrigDst {
    OrigDst(s.parse().unwrap())
}

#[test]
fn enrolled_pods_and_their_services_go_through_the_mesh() {
    let snap = snapshot();
    for orig in ["10.244.0.2:8080", "10.96.0.1:80"] {
        match route(&snap, dst(orig)) {
            Route::Mesh {
                target,
                destination,
            } => {
                assert_eq!(target, "10.244.0.2:8080".parse().unwrap());
                assert_eq!(destination.name, "mesh");
            }
            other => panic!("{orig}: {other:?}"),
        }
    }
}

#[test]
fn unenrolled_and_unknown_destinations_go_plain() {
    let snap = snapshot();
    match route(&snap, dst("10.244.0.3:22")) {
        Route::Plain {
            target,
            destination: Some(w),
        } => {
            assert_eq!(target.port(), 22);
            assert_eq!(w.name, "plain");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        route(&snap, dst("192.0.2.7:443")),
        Route::Plain {
            target: "192.0.2.7:443".parse().unwrap(),
            destination: None
        }
    );
}

#[test]
fn service_without_ready_endpoint_or_port_has_no_route() {
    let snap = snapshot();
    assert_eq!(route(&snap, dst("10.96.0.2:80")), Route::NoEndpoint);
    assert_eq!(route(&snap, dst("10.96.0.1:81")), Route::NoEndpoint);
}

struct Recorder(tokio::sync::mpsc::UnboundedSender<ConnectionRecord>);

impl ConnectionObserver for Recorder {
    fn connection_closed(&self, record: &ConnectionRecord) {
        let _ = self.0.send(record.clone());
    }
}

#[tokio::test]
async fn dialling_the_listener_itself_is_reset_not_looped() {
    let state = StateStore::new(snapshot());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let factory = SocketFactory::plain(Duration::from_secs(1));
    let handoff = Handoff::new(std::env::temp_dir());
    let proxy = OutboundProxy::new(state, factory, Arc::new(Recorder(tx)), None, handoff);
    let listener = factory.listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let (_, adopted) = tokio::sync::mpsc::unbounded_channel();
    let server =
        tokio::spawn(proxy.serve(listener, adopted, shutdown.clone(), Duration::from_secs(1)));

    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let err = client.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let record = rx.recv().await.unwrap();
    assert_eq!(record.result.status, Status::Denied);
    assert_eq!(record.orig_dst, OrigDst(addr));

    shutdown.cancel();
    server.await.unwrap();
    // The listener is closed once serve returns.
    assert!(TcpStream::connect(addr).await.is_err());
}
