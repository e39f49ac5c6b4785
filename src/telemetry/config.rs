//! The environment, read once at start and validated: every bad value is an error naming its
//! variable.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tracing_subscriber::filter::Targets;

/// The OTLP transport.
///
/// ```
/// use tokentrace::telemetry::{Protocol, TelemetryConfig};
/// let config = TelemetryConfig::from_vars("svc", [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])?;
/// assert_eq!(config.traces.protocol, Protocol::HttpProtobuf);
/// assert_eq!(config.traces.endpoint, "http://localhost:4318/v1/traces");
/// # Ok::<(), tokentrace::telemetry::ConfigError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by default).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, paths `/v1/traces`, `/v1/logs`).
    HttpProtobuf,
}

/// Where and how one signal is exported.
///
/// ```
/// use tokentrace::telemetry::TelemetryConfig;
/// let config = TelemetryConfig::from_vars("svc", [("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20t")])?;
/// assert_eq!(config.logs.headers, [("authorization".to_owned(), "Bearer t".to_owned())]);
/// # Ok::<(), tokentrace::telemetry::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpTarget {
    /// Full endpoint URL (for HTTP, including the `/v1/...` path).
    pub endpoint: String,
    /// Transport.
    pub protocol: Protocol,
    /// Extra headers (gRPC metadata), such as authentication.
    pub headers: Vec<(String, String)>,
    /// Limit for one export.
    pub timeout: Duration,
    /// TLS settings, used for an `https://` endpoint.
    pub tls: TlsConfig,
}

/// TLS for an `https://` OTLP endpoint: rustls, trusting the platform's roots unless a CA
/// bundle is given. The files are read and checked when the configuration is read.
///
/// ```
/// use tokentrace::telemetry::TelemetryConfig;
///
/// let error = TelemetryConfig::from_vars("svc", [
///     ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://collector:4317"),
///     ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/no/such/ca.pem"),
/// ]).unwrap_err();
/// assert_eq!(error.variable(), "OTEL_EXPORTER_OTLP_CERTIFICATE");
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificates to trust instead of the platform's roots
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE` and its per-signal variant).
    pub ca_certificate: Option<Vec<u8>>,
    /// PEM certificate chain and private key for mutual TLS
    /// (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `OTEL_EXPORTER_OTLP_CLIENT_KEY`, and per signal).
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
    /// `OTEL_EXPORTER_OTLP_INSECURE`: for gRPC, an endpoint given without a scheme is reached
    /// without TLS. tokentrace requires a scheme, so `http://` and `https://` decide; it is read
    /// and checked for compatibility.
    pub insecure: bool,
}

impl fmt::Debug for TlsConfig {
    // The key is a secret: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_certificate", &self.ca_certificate.as_ref().map(Vec::len))
            .field("client_identity", &self.client_identity.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Reads a PEM file named by `variable`, checking it holds what `check` expects.
fn pem_file(
    variable: &str,
    path: &str,
    what: &str,
    check: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|error| ConfigError::new(variable, format!("cannot read {path:?}: {error}")))?;
    if check(&pem) {
        Ok(pem)
    } else {
        Err(ConfigError::new(variable, format!("{path:?} holds no valid PEM {what}")))
    }
}

fn has_certificates(pem: &[u8]) -> bool {
    use rustls::pki_types::pem::PemObject;
    let certificates: Result<Vec<_>, _> = rustls::pki_types::CertificateDer::pem_slice_iter(pem).collect();
    certificates.is_ok_and(|certificates| !certificates.is_empty())
}

fn has_private_key(pem: &[u8]) -> bool {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem).is_ok()
}

/// The trace sampler (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
///
/// ```
/// use tokentrace::telemetry::{SamplerConfig, TelemetryConfig};
/// let config = TelemetryConfig::from_vars("svc", [("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.1")])?;
/// assert_eq!(config.sampler, SamplerConfig::TraceIdRatio(0.1));
/// # Ok::<(), tokentrace::telemetry::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum SamplerConfig {
    /// Record everything.
    AlwaysOn,
    /// Record nothing.
    AlwaysOff,
    /// Record a fraction of traces, chosen by trace id.
    TraceIdRatio(f64),
    /// Follow the parent's decision; use the inner sampler for roots. An unsampled parent stays
    /// unsampled.
    ParentBased(Box<SamplerConfig>),
}

/// Everything [`init`](super::init) sets up, as read from the environment.
///
/// ```
/// use tokentrace::telemetry::{Protocol, TelemetryConfig};
///
/// let config = TelemetryConfig::from_vars("dynamo-frontend", [
///     ("OTEL_EXPORT_ENABLED", "true"),
///     ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4317"),
/// ])?;
/// assert!(config.export_traces && config.export_logs);
/// assert_eq!(config.traces.endpoint, "http://tempo:4317");
/// assert_eq!(config.logs.endpoint, "http://tempo:4317"); // logs follow traces
/// assert_eq!(config.traces.protocol, Protocol::Grpc);
/// assert_eq!(config.service_name, "dynamo-frontend");
///
/// let error = TelemetryConfig::from_vars("x", [("OTEL_TRACES_SAMPLER_ARG", "lots")]).unwrap_err();
/// assert!(error.to_string().starts_with("OTEL_TRACES_SAMPLER_ARG"));
/// # Ok::<(), tokentrace::telemetry::ConfigError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// `service.name`: `OTEL_SERVICE_NAME`, else the component's default.
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: Vec<(String, String)>,
    /// OTLP trace export: `OTEL_EXPORT_ENABLED`, unless `OTEL_TRACES_EXPORTER` leaves `otlp` out.
    pub export_traces: bool,
    /// `OTEL_TRACES_EXPORTER` names `console`: each finished trace of this process is printed on
    /// stderr as a waterfall (one JSON object per trace with `DYN_LOGGING_JSONL`), with no
    /// collector needed.
    pub console_traces: bool,
    /// `OTEL_EXPORT_ENABLED` unless `OTEL_EXPORT_LOGS_ENABLED` opts out.
    pub export_logs: bool,
    /// `DYN_LOGGING_JSONL`.
    pub jsonl: bool,
    /// `DYN_LOG` (validated filter directives, `info` by default).
    pub log_filter: String,
    /// Trace export.
    pub traces: OtlpTarget,
    /// Log export.
    pub logs: OtlpTarget,
    /// `OTEL_METRICS_EXPORTER=otlp`: metrics under the OpenTelemetry GenAI names, over OTLP
    /// (off by default; `none` keeps it off).
    pub export_metrics: bool,
    /// Metric export (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, default: where traces go).
    pub metrics: OtlpTarget,
    /// The sampler.
    pub sampler: SamplerConfig,
    /// `OTEL_PROPAGATORS` (`tracecontext,baggage` by default).
    pub propagators: crate::propagation::Propagators,
    /// `TOKENTRACE_TRACES_KEEP`: rules that keep a trace the head sampler dropped, decided when
    /// the request ends (unset: head sampling only).
    pub keep: Option<super::KeepRules>,
    /// `TOKENTRACE_TRACES_SUMMARY`: with keep rules, a dropped request still exports its local
    /// root span alone, so it can be found by its id.
    pub keep_summary: bool,
    /// `TOKENTRACE_TRACES_KEEP_MAX_SPANS`, `TOKENTRACE_TRACES_KEEP_MAX_BYTES`: what may be held
    /// for undecided requests (default 100,000 spans, 128 MiB).
    pub keep_max_spans: usize,
    /// See [`TelemetryConfig::keep_max_spans`].
    pub keep_max_bytes: usize,
    /// `TOKENTRACE_TRACES_KEEP_GRACE` (`500ms`, `30s`; default 30 s, `0s` for none): how long a
    /// request whose caller is another process is held after it ended here, undecided, so that
    /// the caller's decision to keep it still finds it. Set it above the longest time between a
    /// worker's part ending and the whole request ending (a disaggregated prefill ends at the
    /// first token).
    pub keep_grace: std::time::Duration,
}

/// A bad environment value; names the variable.
///
/// ```
/// use tokentrace::telemetry::TelemetryConfig;
/// let error = TelemetryConfig::from_vars("svc", [("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]).unwrap_err();
/// assert_eq!(error.variable(), "OTEL_EXPORTER_OTLP_TIMEOUT");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    variable: String,
    problem: String,
}

impl ConfigError {
    fn new(variable: &str, problem: impl Into<String>) -> Self {
        Self { variable: variable.to_owned(), problem: problem.into() }
    }

    /// The variable at fault.
    ///
    /// ```
    /// use tokentrace::telemetry::TelemetryConfig;
    ///
    /// let error = TelemetryConfig::from_vars("frontend", [("DYN_LOG", "info,,=nonsense=")]).unwrap_err();
    /// assert_eq!(error.variable(), "DYN_LOG");
    /// assert!(error.to_string().starts_with("DYN_LOG: "));
    /// ```
    pub fn variable(&self) -> &str {
        &self.variable
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

const GRPC_DEFAULT: &str = "http://localhost:4317";
const HTTP_DEFAULT_BASE: &str = "http://localhost:4318";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The variables, looked up by name.
struct Vars(HashMap<String, String>);

impl Vars {
    /// A set, non-blank value.
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "on" | "yes" => Ok(Some(true)),
            "0" | "false" | "off" | "no" => Ok(Some(false)),
            _ => Err(ConfigError::new(
                name,
                format!("expected 1/true/on/yes or 0/false/off/no, got {value:?}"),
            )),
        }
    }

    /// The first of `names` that is set, with its name.
    fn first<'a>(&'a self, names: &[&'a str]) -> Option<(&'a str, &'a str)> {
        names.iter().find_map(|name| self.get(name).map(|value| (*name, value)))
    }
}

impl TelemetryConfig {
    /// Reads the process environment. `default_service_name` names this component
    /// (`dynamo-frontend`, `dynamo-worker-vllm`, ...) unless `OTEL_SERVICE_NAME` is set.
    ///
    /// (Not run as a test: it would depend on the environment of whoever runs the tests.)
    ///
    /// ```no_run
    /// use tokentrace::telemetry::TelemetryConfig;
    ///
    /// let config = TelemetryConfig::from_env("dynamo-frontend")?;
    /// if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
    ///     assert_eq!(config.service_name, "dynamo-frontend");
    /// }
    /// # Ok::<(), tokentrace::telemetry::ConfigError>(())
    /// ```
    pub fn from_env(default_service_name: &str) -> Result<Self, ConfigError> {
        Self::from_vars(default_service_name, std::env::vars())
    }

    /// Reads the given variables instead of the process environment.
    ///
    /// ```
    /// use tokentrace::telemetry::TelemetryConfig;
    ///
    /// let config = TelemetryConfig::from_vars("dynamo-worker-vllm", [
    ///     ("OTEL_EXPORT_ENABLED", "1"),
    ///     ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://tempo:4317"),
    ///     ("OTEL_EXPORT_LOGS_ENABLED", "false"),
    /// ])?;
    /// assert!(config.export_traces && !config.export_logs);
    /// assert_eq!(config.service_name, "dynamo-worker-vllm");
    ///
    /// let refused = TelemetryConfig::from_vars("x", [("OTEL_EXPORT_ENABLED", "maybe")]).unwrap_err();
    /// assert_eq!(refused.variable(), "OTEL_EXPORT_ENABLED");
    /// # Ok::<(), tokentrace::telemetry::ConfigError>(())
    /// ```
    pub fn from_vars<I, K, V>(default_service_name: &str, vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars = Vars(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        let export = vars.flag("OTEL_EXPORT_ENABLED")?.unwrap_or(false);
        let (otlp_traces, console_traces) = traces_exporters(vars.get("OTEL_TRACES_EXPORTER"))?;
        let logs_opt_in = vars.flag("OTEL_EXPORT_LOGS_ENABLED")?.unwrap_or(true);
        let log_filter = vars.get("DYN_LOG").unwrap_or("info").to_owned();
        Targets::from_str(&log_filter).map_err(|error| ConfigError::new("DYN_LOG", error.to_string()))?;
        let traces = otlp_target(&vars, "TRACES", "/v1/traces", None)?;
        // Dynamo's rule: logs go where traces go, unless told otherwise.
        let logs = otlp_target(&vars, "LOGS", "/v1/logs", vars.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))?;
        let metrics =
            otlp_target(&vars, "METRICS", "/v1/metrics", vars.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))?;
        let export_metrics = match vars.get("OTEL_METRICS_EXPORTER").map(str::trim) {
            None | Some("" | "none") => false,
            Some("otlp") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    "OTEL_METRICS_EXPORTER",
                    format!("unknown exporter `{other}` (known: otlp, none)"),
                ))
            }
        };
        Ok(Self {
            service_name: vars.get("OTEL_SERVICE_NAME").unwrap_or(default_service_name).to_owned(),
            resource_attributes: match vars.get("OTEL_RESOURCE_ATTRIBUTES") {
                Some(list) => key_value_list("OTEL_RESOURCE_ATTRIBUTES", list)?,
                None => Vec::new(),
            },
            export_traces: export && otlp_traces,
            console_traces,
            export_logs: export && logs_opt_in,
            jsonl: vars.flag("DYN_LOGGING_JSONL")?.unwrap_or(false),
            log_filter,
            traces,
            logs,
            export_metrics,
            metrics,
            sampler: sampler(&vars)?,
            propagators: crate::propagation::Propagators::parse(vars.get("OTEL_PROPAGATORS").unwrap_or(""))
                .map_err(|error| ConfigError::new("OTEL_PROPAGATORS", error.to_string()))?,
            keep: vars
                .get("TOKENTRACE_TRACES_KEEP")
                .map(super::KeepRules::parse)
                .transpose()
                .map_err(|why| ConfigError::new("TOKENTRACE_TRACES_KEEP", why))?,
            keep_summary: vars.flag("TOKENTRACE_TRACES_SUMMARY")?.unwrap_or(false),
            keep_max_spans: count(&vars, "TOKENTRACE_TRACES_KEEP_MAX_SPANS", 100_000)?,
            keep_max_bytes: count(&vars, "TOKENTRACE_TRACES_KEEP_MAX_BYTES", 128 << 20)?,
            keep_grace: match vars.get("TOKENTRACE_TRACES_KEEP_GRACE") {
                None => std::time::Duration::from_secs(30),
                Some(value) => super::keep::duration(value.trim()).ok_or_else(|| {
                    ConfigError::new(
                        "TOKENTRACE_TRACES_KEEP_GRACE",
                        format!("expected a time with ms or s, such as 500ms or 30s, got {value:?}"),
                    )
                })?,
            },
        })
    }
}

/// `OTEL_TRACES_EXPORTER`: `otlp` (the default), `console`, `none`, comma-separated; whether
/// `otlp` and `console` are named.
fn traces_exporters(list: Option<&str>) -> Result<(bool, bool), ConfigError> {
    let Some(list) = list.filter(|list| !list.trim().is_empty()) else { return Ok((true, false)) };
    let (mut otlp, mut console) = (false, false);
    for name in list.split(',').map(str::trim) {
        match name {
            "otlp" => otlp = true,
            "console" => console = true,
            "none" => {}
            other => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_EXPORTER",
                    format!("unknown exporter `{other}` (known: otlp, console, none)"),
                ))
            }
        }
    }
    Ok((otlp, console))
}

/// Resolves one signal's target: its own variables, then the generic ones, then (for logs)
/// the traces endpoint `fallback`, then the default for the protocol.
fn otlp_target(
    vars: &Vars,
    signal: &str,
    http_path: &str,
    fallback: Option<&str>,
) -> Result<OtlpTarget, ConfigError> {
    let var = |suffix: &str| format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}");
    let protocol = match vars.first(&[&var("PROTOCOL"), "OTEL_EXPORTER_OTLP_PROTOCOL"]) {
        None => Protocol::Grpc,
        Some((_, "grpc")) => Protocol::Grpc,
        Some((_, "http/protobuf")) => Protocol::HttpProtobuf,
        Some((name, other)) => {
            return Err(ConfigError::new(name, format!("expected grpc or http/protobuf, got {other:?}")))
        }
    };
    let signal_endpoint = var("ENDPOINT");
    let (endpoint, from) = if let Some(endpoint) = vars.get(&signal_endpoint) {
        (endpoint.to_owned(), signal_endpoint.as_str())
    } else if let Some(base) = vars.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        let endpoint = match protocol {
            Protocol::Grpc => base.to_owned(),
            Protocol::HttpProtobuf => format!("{}{http_path}", base.trim_end_matches('/')),
        };
        (endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT")
    } else if let Some(traces) = fallback {
        let endpoint = match (protocol, traces.strip_suffix("/v1/traces")) {
            (Protocol::HttpProtobuf, Some(base)) => format!("{base}{http_path}"),
            _ => traces.to_owned(),
        };
        (endpoint, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    } else {
        let endpoint = match protocol {
            Protocol::Grpc => GRPC_DEFAULT.to_owned(),
            Protocol::HttpProtobuf => format!("{HTTP_DEFAULT_BASE}{http_path}"),
        };
        (endpoint, "")
    };
    validate_endpoint(from, &endpoint)?;
    let headers = match vars.first(&[&var("HEADERS"), "OTEL_EXPORTER_OTLP_HEADERS"]) {
        Some((variable, list)) => {
            let headers = key_value_list(variable, list)?;
            for (name, value) in &headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || http::HeaderValue::from_str(value).is_err()
                {
                    return Err(ConfigError::new(variable, format!("{name:?} is not a valid header")));
                }
            }
            headers
        }
        None => Vec::new(),
    };
    let timeout = match vars.first(&[&var("TIMEOUT"), "OTEL_EXPORTER_OTLP_TIMEOUT"]) {
        Some((name, value)) => value
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| ConfigError::new(name, format!("expected milliseconds, got {value:?}")))?,
        None => DEFAULT_TIMEOUT,
    };
    let names = |suffix: &str| [var(suffix), format!("OTEL_EXPORTER_OTLP_{suffix}")];
    let [ca_signal, ca_all] = names("CERTIFICATE");
    let [cert_signal, cert_all] = names("CLIENT_CERTIFICATE");
    let [key_signal, key_all] = names("CLIENT_KEY");
    let ca_certificate = match vars.first(&[&ca_signal, &ca_all]) {
        Some((variable, path)) => Some(pem_file(variable, path, "certificate", has_certificates)?),
        None => None,
    };
    let client_identity = match (vars.first(&[&cert_signal, &cert_all]), vars.first(&[&key_signal, &key_all]))
    {
        (Some((cert_var, cert)), Some((key_var, key))) => Some((
            pem_file(cert_var, cert, "certificate", has_certificates)?,
            pem_file(key_var, key, "private key", has_private_key)?,
        )),
        (Some((variable, _)), None) | (None, Some((variable, _))) => return Err(ConfigError::new(
            variable,
            "mutual TLS needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY",
        )),
        (None, None) => None,
    };
    let insecure = match vars.first(&[&var("INSECURE"), "OTEL_EXPORTER_OTLP_INSECURE"]) {
        Some((variable, _)) => vars.flag(variable)?.unwrap_or(false),
        None => false,
    };
    let tls = TlsConfig { ca_certificate, client_identity, insecure };
    Ok(OtlpTarget { endpoint, protocol, headers, timeout, tls })
}

fn validate_endpoint(variable: &str, endpoint: &str) -> Result<(), ConfigError> {
    let variable = if variable.is_empty() { "OTEL_EXPORTER_OTLP_ENDPOINT" } else { variable };
    let uri: http::Uri =
        endpoint.parse().map_err(|_| ConfigError::new(variable, format!("{endpoint:?} is not a URL")))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(ConfigError::new(
            variable,
            format!("{endpoint:?} must be an http:// or https:// URL with a host"),
        )),
    }
}

/// `k1=v1,k2=v2` with percent-encoded values (W3C Baggage octets), as the OTel spec defines
/// for headers and resource attributes.
fn key_value_list(variable: &str, list: &str) -> Result<Vec<(String, String)>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ConfigError::new(variable, format!("{item:?} is not key=value")))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(ConfigError::new(variable, format!("{item:?} has an empty key")));
            }
            let value = percent_decode(value.trim())
                .ok_or_else(|| ConfigError::new(variable, format!("{item:?} has a bad percent escape")))?;
            Ok((key.to_owned(), value))
        })
        .collect()
}

fn percent_decode(value: &str) -> Option<String> {
    String::from_utf8(crate::propagation::percent_decode(value.as_bytes(), true)?).ok()
}

/// A positive whole number, `default` when unset.
fn count(vars: &Vars, variable: &str, default: usize) -> Result<usize, ConfigError> {
    match vars.get(variable) {
        None => Ok(default),
        Some(value) => value.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
            ConfigError::new(variable, format!("expected a positive whole number, got {value:?}"))
        }),
    }
}

fn sampler(vars: &Vars) -> Result<SamplerConfig, ConfigError> {
    const ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
    let ratio = || -> Result<f64, ConfigError> {
        match vars.get(ARG) {
            None => Ok(1.0),
            Some(value) => match value.parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
                _ => Err(ConfigError::new(ARG, format!("expected a ratio from 0 to 1, got {value:?}"))),
            },
        }
    };
    let parent_based = |root: SamplerConfig| SamplerConfig::ParentBased(Box::new(root));
    // Validate the argument even when the chosen sampler ignores it: a typo should not hide.
    let ratio = ratio()?;
    Ok(match vars.get("OTEL_TRACES_SAMPLER") {
        None | Some("parentbased_always_on") => parent_based(SamplerConfig::AlwaysOn),
        Some("always_on") => SamplerConfig::AlwaysOn,
        Some("always_off") => SamplerConfig::AlwaysOff,
        Some("traceidratio") => SamplerConfig::TraceIdRatio(ratio),
        Some("parentbased_always_off") => parent_based(SamplerConfig::AlwaysOff),
        Some("parentbased_traceidratio") => parent_based(SamplerConfig::TraceIdRatio(ratio)),
        Some(other) => {
            return Err(ConfigError::new(
                "OTEL_TRACES_SAMPLER",
                format!(
                    "expected always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio, got {other:?}"
                ),
            ))
        }
    })
}
