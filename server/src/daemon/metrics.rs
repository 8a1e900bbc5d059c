//! `[metrics] listen = "127.0.0.1:9925"`: the server's counters and gauges in the OpenMetrics
//! text format (prometheus-client), at `GET /metrics` on a loopback address. Off by default;
//! a non-loopback address is refused by the configuration.
//!
//! Counters (since the start): `postern_messages_received_total`,
//! `postern_messages_rejected_total`, `postern_deliveries_total{result}` (delivered, deferred,
//! failed), `postern_dsns_total`, `postern_outbound_deliveries_total{tls}` (true, false),
//! `postern_auth_total{result}` (ok, failed, locked), `postern_rejections_total{status}`,
//! `postern_check_results_total{check,result}` (spf, dkim, dmarc),
//! `postern_received_tls_total{version}`, `postern_relayed_tls_total{version}`,
//! `postern_deliveries_by_method_total{method}`, `postern_dns_lookups_total{result}`
//! (answer, nxdomain, nodata, temporary, cname_loop, cached). Gauges: `postern_sessions{listener}`,
//! `postern_queue_messages`, `postern_queue_pending_recipients`,
//! `postern_queue_oldest_age_seconds`, `postern_uptime_seconds`,
//! `postern_certificate_expiry_timestamp_seconds`.
//!
//! One request per connection, HTTP/1.1 without keep-alive; a request head larger than 8 KiB
//! or slower than 5 s is dropped.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_io::{Async, Timer};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::daemon::control::{ControlState, queue_list};

/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Answers scrapes on `listener` until the task is dropped.
pub async fn serve(listener: Async<TcpListener>, state: Arc<ControlState>) {
    super::answer_each("metrics", listener.incoming(), |stream| {
        let state = state.clone();
        async move {
            let _ = answer(stream, &state).await;
        }
    })
    .await;
}

async fn answer(
    mut stream: Async<std::net::TcpStream>,
    state: &Arc<ControlState>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(true)
    };
    let late = async {
        Timer::after(Duration::from_secs(5)).await;
        Ok(false)
    };
    if !future::or(read, late).await? {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&head);
    let request = line.lines().next().unwrap_or("");
    let (status, kind, body) = match request.split(' ').collect::<Vec<_>>().as_slice() {
        ["GET", "/metrics", version] if version.starts_with("HTTP/1.") => {
            let store = state.store.clone();
            let entries = smol::unblock(move || queue_list(&store))
                .await
                .unwrap_or_default();
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                render(state, &entries),
            )
        }
        [_, _, version] if version.starts_with("HTTP/1.") => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "the metrics are at /metrics\n".to_string(),
        ),
        _ => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "not an HTTP/1 request\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

/// The page: every metric, as they are now.
fn render(state: &ControlState, entries: &[crate::daemon::control::QueueEntry]) -> String {
    let mut registry = Registry::default();
    let totals: std::collections::HashMap<&str, u64> =
        crate::log::stats::totals().into_iter().collect();
    let total = |name: &str| totals.get(name).copied().unwrap_or(0);
    let counter = |n: u64| {
        let c: Counter = Counter::default();
        c.inc_by(n);
        c
    };
    registry.register(
        "postern_messages_received",
        "Messages accepted (250 to the end of data)",
        counter(total("received")),
    );
    registry.register(
        "postern_messages_rejected",
        "Commands refused (a sender, a recipient, a message)",
        counter(total("rejected")),
    );
    let deliveries = Family::<Vec<(String, String)>, Counter>::default();
    for result in ["delivered", "deferred", "failed"] {
        deliveries
            .get_or_create(&vec![("result".into(), result.into())])
            .inc_by(total(result));
    }
    registry.register(
        "postern_deliveries",
        "Delivery attempts per recipient, by result",
        deliveries,
    );
    registry.register(
        "postern_dsns",
        "Delivery status notifications queued",
        counter(total("dsn")),
    );
    let outbound = Family::<Vec<(String, String)>, Counter>::default();
    for (tls, name) in [("true", "relayed_tls"), ("false", "relayed_plaintext")] {
        outbound
            .get_or_create(&vec![("tls".into(), tls.into())])
            .inc_by(total(name));
    }
    registry.register(
        "postern_outbound_deliveries",
        "Recipients delivered to other servers, by whether TLS was used",
        outbound,
    );
    let auth = Family::<Vec<(String, String)>, Counter>::default();
    for (result, name) in [
        ("ok", "auth_ok"),
        ("failed", "auth_failed"),
        ("locked", "auth_locked"),
    ] {
        auth.get_or_create(&vec![("result".into(), result.into())])
            .inc_by(total(name));
    }
    registry.register("postern_auth", "Logins (AUTH), by result", auth);
    // By label: refusals by enhanced status, SPF/DKIM/DMARC results of received mail, TLS
    // versions in and out, deliveries by method.
    let described = [
        (
            "rejected",
            "postern_rejections",
            "Refusals, by enhanced status code",
        ),
        (
            "checks",
            "postern_check_results",
            "SPF, DKIM and DMARC results of mail from other servers",
        ),
        (
            "received_tls",
            "postern_received_tls",
            "Messages received, by TLS version (none: plaintext)",
        ),
        (
            "relayed_tls",
            "postern_relayed_tls",
            "Recipients delivered to other servers, by TLS version",
        ),
        (
            "delivered_method",
            "postern_deliveries_by_method",
            "Recipients delivered, by method (maildir, lmtp, command, smtp)",
        ),
    ];
    let labelled = crate::log::stats::labelled_totals();
    for (metric, name, help) in described {
        let family = Family::<Vec<(String, String)>, Counter>::default();
        for (m, label, value, n) in &labelled {
            if *m != metric {
                continue;
            }
            let labels = if metric == "checks" {
                vec![
                    ("check".to_string(), label.to_string()),
                    ("result".into(), value.clone()),
                ]
            } else {
                vec![(label.to_string(), value.clone())]
            };
            family.get_or_create(&labels).inc_by(*n);
        }
        registry.register(name, help, family);
    }

    let dns = Family::<Vec<(String, String)>, Counter>::default();
    for (outcome, n) in crate::dns::outcomes() {
        dns.get_or_create(&vec![("result".into(), outcome.into())])
            .inc_by(n);
    }
    registry.register(
        "postern_dns_lookups",
        "DNS lookups (SPF, DKIM, DMARC, MX, PTR, MTA-STS...), by outcome; cached: answered from the cache",
        dns,
    );

    let gauge = |v: i64| {
        let g: Gauge = Gauge::default();
        g.set(v);
        g
    };
    // The same figures as `postern status`.
    let now = crate::daemon::control::status(state, entries);
    let sessions = Family::<Vec<(String, String)>, Gauge>::default();
    for (role, open) in &now.sessions {
        sessions
            .get_or_create(&vec![("listener".into(), role.clone())])
            .set(*open as i64);
    }
    registry.register(
        "postern_sessions",
        "Connections open, by listener",
        sessions,
    );
    registry.register(
        "postern_queue_messages",
        "Messages in the queue",
        gauge(now.queued_messages as i64),
    );
    registry.register(
        "postern_queue_pending_recipients",
        "Recipients in the queue not delivered yet",
        gauge(now.pending_recipients as i64),
    );
    registry.register(
        "postern_queue_oldest_age_seconds",
        "Age of the oldest queued message",
        gauge(now.oldest_age_seconds as i64),
    );
    registry.register(
        "postern_uptime_seconds",
        "Seconds since the server started",
        gauge(now.uptime_seconds as i64),
    );
    if let Some((_, at)) = state.certificates.current().default_expiry() {
        registry.register(
            "postern_certificate_expiry_timestamp_seconds",
            "When the default certificate expires (Unix time)",
            gauge(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64),
        );
    }
    let mut out = String::new();
    if encode(&mut out, &registry).is_err() {
        out = "# EOF\n".into();
    }
    out
}
