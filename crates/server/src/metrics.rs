//! Prometheus metrics: request counts and latencies by route and status.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route template (`/api/v1/records/{type}/{id}`), never the raw
    /// path, so ids do not reach the metrics.
    pub route: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RequestLabels, Histogram>,
    /// Audit events that found their places in the intrusion detectors'
    /// queue taken (see `detection::MAX_QUEUED_READS` and
    /// `detection::MAX_QUEUED_DENIALS`): read back from the audit log and
    /// examined later.
    pub detector_skipped: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(
        [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]
        .into_iter(),
    )
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("strongroom");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_requests",
            "HTTP requests served, by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route and status",
            latency.clone(),
        );
        let detector_skipped = Counter::default();
        registry.register(
            "detector_skipped_events",
            "Audit events the intrusion detectors had no room for when stored, read back from the audit log and examined later",
            detector_skipped.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            detector_skipped,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
