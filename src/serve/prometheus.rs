//! `GET /metrics`: what a Prometheus server scrapes from each replica, in Prometheus' text
//! format (version 0.0.4).
//!
//! - `xray_http_requests_total{route,status}`: requests answered, by route template and status
//! - `xray_http_request_duration_seconds{route}`: their latency, a histogram
//! - `xray_inference_queue_depth` / `xray_inference_queue_capacity`: requests waiting for or
//!   in the model, and how many may
//! - `xray_model_load_seconds`: how long loading the model took at start
//! - `xray_predictions_total{out_of_distribution}`: images answered; with `--metrics-labels`
//!   also by predicted class (`label`)
//! - `xray_model_info{model,arch,weights_sha256}`: always 1, naming the model being served
//!
//! Each server has its own registry, so several servers in one process (the tests) do not mix
//! their counts.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The server's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    predictions: IntCounterVec,
    /// Whether `predictions` has a `label` dimension.
    by_label: bool,
    /// Requests waiting for or in the model (shared with the inference thread, as every
    /// metric is: clones count into the same value).
    queue_depth: IntGauge,
}

impl Metrics {
    /// Registers every metric; `model`, `arch` and `weights_sha256` name what is served.
    pub fn new(
        model: &str,
        arch: &str,
        weights_sha256: &str,
        queue_capacity: usize,
        load_seconds: f64,
        by_label: bool,
    ) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("xray_http_requests_total", "HTTP requests answered"),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "xray_http_request_duration_seconds",
                "Time from request to response",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route"],
        )?;
        // By label only when asked: whoever may read the metrics could otherwise follow which
        // label each scan got.
        let predictions = if by_label {
            IntCounterVec::new(
                Opts::new(
                    "xray_predictions_total",
                    "Images answered, by predicted class",
                ),
                &["label", "out_of_distribution"],
            )?
        } else {
            IntCounterVec::new(
                Opts::new("xray_predictions_total", "Images answered"),
                &["out_of_distribution"],
            )?
        };
        let queue_depth = IntGauge::new(
            "xray_inference_queue_depth",
            "Requests waiting for or in the model",
        )?;
        let capacity = IntGauge::new(
            "xray_inference_queue_capacity",
            "Requests that may wait for the model before 503",
        )?;
        capacity.set(queue_capacity as i64);
        let load = Gauge::new(
            "xray_model_load_seconds",
            "Seconds the model took to load at start",
        )?;
        load.set(load_seconds);
        let info = IntGaugeVec::new(
            Opts::new("xray_model_info", "The model being served (always 1)"),
            &["model", "arch", "weights_sha256"],
        )?;
        info.with_label_values(&[model, arch, weights_sha256])
            .set(1);
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(predictions.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(capacity))?;
        registry.register(Box::new(load))?;
        registry.register(Box::new(info))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            predictions,
            by_label,
            queue_depth,
        })
    }

    /// Counts one answered request.
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.latency.with_label_values(&[route]).observe(seconds);
    }

    /// Counts one answered image.
    pub fn prediction(&self, label: &str, out_of_distribution: Option<bool>) {
        let ood = match out_of_distribution {
            Some(true) => "true",
            Some(false) => "false",
            None => "unknown",
        };
        if self.by_label {
            self.predictions.with_label_values(&[label, ood]).inc();
        } else {
            self.predictions.with_label_values(&[ood]).inc();
        }
    }

    /// A request was admitted.
    pub fn enqueued(&self) {
        self.queue_depth.inc();
    }

    /// An admitted request was answered (each [`Metrics::enqueued`] has one).
    pub fn dequeued(&self) {
        self.queue_depth.dec();
    }

    /// Every metric in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of registered metrics cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
