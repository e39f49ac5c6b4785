//! OTLP over TLS against local receivers serving TLS with a CA and certificates generated here
//! (rcgen): gRPC (tonic) and HTTP/protobuf (hyper over tokio-rustls), with and without the CA,
//! and mutual TLS with and without a client certificate.

#[allow(unused_imports)]
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::{Span as _, Tracer as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use support::otlp::Received;
use tokentrace::telemetry::{Telemetry, TelemetryConfig};

/// A CA, a server certificate for `localhost` and a client certificate it signed, as PEM files.
struct Pki {
    dir: PathBuf,
    ca: String,
    server: (String, String),
}

impl Pki {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "tokentrace test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["exporter".to_string()]).unwrap();
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();

        let dir =
            std::env::temp_dir().join(format!("tokentrace-tls-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
            ("bad.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".to_owned()),
        ] {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        Self { dir, ca: ca.pem(), server: (server.pem(), server_key.serialize_pem()) }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn incoming(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |listener| async move {
        Some((listener.accept().await.map(|(socket, _)| socket), listener))
    })
}

/// OTLP/gRPC over TLS on 127.0.0.1; requires a client certificate signed by the CA when `mtls`.
async fn grpc_receiver(pki: &Pki, mtls: bool) -> (SocketAddr, Received) {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(&pki.server.0, &pki.server.1));
    if mtls {
        tls = tls.client_ca_root(Certificate::from_pem(&pki.ca));
    }
    let server =
        Server::builder().tls_config(tls).unwrap().add_service(TraceServiceServer::new(received.clone()));
    tokio::spawn(server.serve_with_incoming(incoming(listener)));
    (addr, received)
}

/// OTLP/HTTP (protobuf) over TLS on 127.0.0.1: `/v1/traces`.
async fn http_receiver(pki: &Pki) -> (SocketAddr, Received) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server.0.as_bytes()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.server.1.as_bytes()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else { return };
            let (acceptor, store) = (acceptor.clone(), store.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(socket).await else { return };
                let service =
                    hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let body = request.into_body().collect().await?.to_bytes();
                            let export =
                                ExportTraceServiceRequest::decode(body).expect("a valid export request");
                            store.traces.lock().unwrap().push(export);
                            let response =
                                ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(response))))
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    (addr, received)
}

/// Exports one span with `vars` on a telemetry pipeline of its own; returns how many spans
/// were lost.
async fn export_one(vars: Vec<(&'static str, String)>) -> u64 {
    let mut vars: Vec<(String, String)> = vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    vars.push(("OTEL_EXPORT_ENABLED".into(), "true".into()));
    vars.push(("OTEL_EXPORT_LOGS_ENABLED".into(), "false".into()));
    vars.push(("OTEL_EXPORTER_OTLP_TIMEOUT".into(), "3000".into()));
    let config = TelemetryConfig::from_vars("tls-test", vars).unwrap();
    tokio::task::spawn_blocking(move || {
        let telemetry = Telemetry::build(config).unwrap();
        telemetry.tracer("tls").start("over-tls").end();
        telemetry.shutdown().spans
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_arrive_over_grpc_and_http_when_the_ca_is_given() {
    let pki = Pki::new();
    let (grpc, received) = grpc_receiver(&pki, false).await;
    let lost = export_one(vec![
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("https://localhost:{}", grpc.port())),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem")),
    ])
    .await;
    assert_eq!(lost, 0);
    assert_eq!(received.spans().len(), 1, "the span arrived over gRPC + TLS");

    let (http, received) = http_receiver(&pki).await;
    let lost = export_one(vec![
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("https://localhost:{}/v1/traces", http.port())),
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", pki.path("ca.pem")),
    ])
    .await;
    assert_eq!(lost, 0);
    assert_eq!(received.spans().len(), 1, "the span arrived over HTTP/protobuf + TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_nothing_arrives_and_the_loss_is_counted() {
    let pki = Pki::new();
    let (grpc, received) = grpc_receiver(&pki, false).await;
    let lost = export_one(vec![(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        format!("https://localhost:{}", grpc.port()),
    )])
    .await;
    assert_eq!(lost, 1);
    assert!(received.spans().is_empty());

    let (http, received) = http_receiver(&pki).await;
    let lost = export_one(vec![
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", format!("https://localhost:{}/v1/traces", http.port())),
    ])
    .await;
    assert_eq!(lost, 1);
    assert!(received.spans().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_works_with_the_client_certificate_and_is_refused_without() {
    let pki = Pki::new();
    let (grpc, received) = grpc_receiver(&pki, true).await;
    let endpoint = format!("https://localhost:{}", grpc.port());
    let lost = export_one(vec![
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem")),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pki.path("client.pem")),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.path("client.key")),
    ])
    .await;
    assert_eq!(lost, 0);
    assert_eq!(received.spans().len(), 1);

    let lost = export_one(vec![
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem")),
    ])
    .await;
    assert_eq!(lost, 1, "refused without a client certificate");
    assert_eq!(received.spans().len(), 1);
}

#[test]
fn bad_tls_files_are_errors_naming_the_variable() {
    let pki = Pki::new();
    let endpoint = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://localhost:4317".to_owned());
    let cases = [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("missing.pem")),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("bad.pem")),
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", pki.path("client.key")),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pki.path("client.pem")),
    ];
    for (variable, value) in cases {
        let error =
            TelemetryConfig::from_vars("svc", [endpoint.clone(), (variable, value.clone())]).unwrap_err();
        assert_eq!(error.variable(), variable, "{value}: {error}");
    }
    let _ = std::fs::remove_dir_all(&pki.dir);
}
