//! The status page (`GET /` on the admin port): the [`StatusReport`] as one HTML document
//! with its style, script and chart inline, so it works with no network beyond the relay. It
//! reloads itself every [`REFRESH_SECS`]; a small script counts token expiry down between
//! reloads. Everything that came from outside (addresses, replies) is escaped.

use std::fmt::Write;

use super::status::{StatusReport, duration_words};
use crate::clock::rfc3339;
use crate::metrics::activity::Minute;

pub const REFRESH_SECS: u64 = 10;

/// Text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}.num{text-align:right}
.badge{display:inline-block;padding:.1em .6em;border-radius:.3em;color:#fff;font-weight:bold}
.healthy{background:#2e7d32}.degraded{background:#ef6c00}.unhealthy{background:#c62828}
.delivered{color:#2e7d32}.deferred{color:#ef6c00}.bounced{color:#c62828}
.muted{color:#777}ul{margin:.3em 0}.full{color:#c62828;font-weight:bold}
";

/// Counts token expiry down each second from the `data-expires` (Unix seconds) of `.countdown`.
const SCRIPT: &str = "
function tick(){var now=Date.now()/1000;document.querySelectorAll('.countdown').forEach(function(e){
var left=Math.round(Number(e.dataset.expires)-now);if(left<=0){e.textContent='expired';return;}
var h=Math.floor(left/3600),m=Math.floor(left%3600/60),s=left%60;
e.textContent=(h?h+'h ':'')+(h||m?m+'m ':'')+s+'s';});}
tick();setInterval(tick,1000);
";

pub fn render(report: &StatusReport) -> String {
    render_page(report, true)
}

/// `refresh`: the page reloads itself every [`REFRESH_SECS`]. A signed-in page does not:
/// a reload would wipe a form being filled in, and would keep the session alive for as
/// long as the tab is open, so the idle timeout would never come.
pub fn render_page(report: &StatusReport, refresh: bool) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let status = report.status.name();
    let (meta, note) = if refresh {
        (
            format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">"),
            format!("refreshes every {REFRESH_SECS} s"),
        )
    } else {
        (String::new(), "<a href=\"/\">reload</a>".to_owned())
    };
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         {meta}\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>smtprelay on {host}: {status}</title><style>{STYLE}</style></head><body>\
         <h1>smtprelay on {host} <span id=\"status\" class=\"badge {status}\">{status}</span></h1>\
         <p class=\"muted\">version {version}; as of <time id=\"generated\" datetime=\"{at}\">{at}</time>; \
         {note}</p>",
        host = escape(&report.hostname),
        version = report.version,
        at = rfc3339(report.generated_at),
    );
    out.push_str("<ul id=\"reasons\">");
    for reason in &report.reasons {
        let _ = write!(out, "<li>{}</li>", escape(reason));
    }
    out.push_str("</ul>");
    accounts(&mut out, report);
    budgets(&mut out, report);
    pauses(&mut out, report);
    cluster(&mut out, report);
    queue(&mut out, report);
    alerts(&mut out, report);
    let _ = write!(
        out,
        "<h2>The last hour</h2><div id=\"chart\">{}</div>",
        chart(&report.last_hour)
    );
    deliveries(&mut out, report);
    outdated_tls(&mut out, report);
    let _ = write!(out, "<script>{SCRIPT}</script></body></html>");
    out
}

fn accounts(out: &mut String, report: &StatusReport) {
    out.push_str(
        "<h2>Accounts</h2><table id=\"accounts\"><tr><th>Account</th><th>Sends as</th>\
         <th>Transport</th><th>Flow</th><th>Token</th><th>Expires in</th><th>Next refresh</th>\
         <th>Backlog</th></tr>",
    );
    for a in &report.accounts {
        let expires = match a.token_expires_at {
            Some(at) => format!(
                "<span class=\"countdown\" data-expires=\"{at}\">{}</span>",
                if at > report.generated_at {
                    duration_words(at - report.generated_at)
                } else {
                    "expired".to_owned()
                }
            ),
            None => "<span class=\"muted\">no token</span>".to_owned(),
        };
        let reason: String = a
            .remarks()
            .map(|words| format!(": {}", escape(&words)))
            .collect();
        let _ = write!(
            out,
            "<tr data-account=\"{name}\"><td>{name}</td><td>{mailbox}</td><td>{}</td><td>{}</td>\
             <td class=\"token\">{}{reason}</td><td>{expires}</td><td>{}</td>\
             <td class=\"backlog{full}\">{}</td></tr>",
            a.transport,
            a.flow,
            a.token,
            a.next_refresh_at.map_or(String::new(), rfc3339),
            escape(&a.backlog.words()),
            full = if a.backlog.full { " full" } else { "" },
            name = escape(&a.name),
            mailbox = escape(&a.mailbox),
        );
    }
    out.push_str("</table>");
}

fn budgets(out: &mut String, report: &StatusReport) {
    out.push_str(
        "<h2>Budgets</h2><table id=\"budgets\"><tr><th>Account</th><th>Mailbox</th>\
         <th>Sent in the rate window</th><th>Recipients today</th><th>Next send</th></tr>",
    );
    for b in &report.budgets {
        let _ = write!(
            out,
            "<tr data-mailbox=\"{mailbox}\"><td>{}</td><td>{mailbox}</td>\
             <td class=\"num sent\">{} of {} ({})</td><td class=\"num daily\">{} of {}</td>\
             <td class=\"next\">{}</td></tr>",
            escape(&b.account),
            b.sent,
            b.rate_limit,
            b.rate,
            b.recipients_today,
            b.daily_limit,
            b.next_send_at.map_or("now".to_owned(), rfc3339),
            mailbox = escape(&b.mailbox),
        );
    }
    out.push_str("</table>");
}

fn pauses(out: &mut String, report: &StatusReport) {
    out.push_str("<h2>Paused mailboxes</h2>");
    if report.pauses.is_empty() {
        out.push_str("<p id=\"pauses\" class=\"muted\">none</p>");
        return;
    }
    out.push_str(
        "<table id=\"pauses\"><tr><th>Account</th><th>Mailbox</th><th>Why</th>\
         <th>Resumes</th><th>Messages</th></tr>",
    );
    for p in &report.pauses {
        let _ = write!(
            out,
            "<tr data-mailbox=\"{mailbox}\"><td>{}</td><td>{mailbox}</td><td>{}{}</td>\
             <td>{}</td><td class=\"num\">{}</td></tr>",
            escape(&p.account),
            escape(&p.reason),
            if p.needs_admin {
                " <b>(needs an admin)</b>"
            } else {
                ""
            },
            rfc3339(p.until),
            p.messages,
            mailbox = escape(&p.mailbox),
        );
    }
    out.push_str("</table>");
}

fn cluster(out: &mut String, report: &StatusReport) {
    let Some(cluster) = &report.cluster else {
        return;
    };
    let _ = write!(
        out,
        "<h2>Cluster</h2><p id=\"cluster\" data-mode=\"{mode:?}\">Node <b>{}</b>, Redis at {} \
         ({}); budgets {}.</p><table id=\"nodes\"><tr><th>Node</th><th>Version</th>\
         <th>Up since</th><th>Last heartbeat</th></tr>",
        escape(&cluster.node),
        escape(&cluster.redis),
        if cluster.reachable {
            "answering"
        } else {
            "<b>unreachable</b>"
        },
        escape(&cluster.mode_words()),
        mode = cluster.mode,
    );
    for node in &cluster.nodes {
        let _ = write!(
            out,
            "<tr data-node=\"{name}\"><td>{name}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&node.version),
            rfc3339(node.started_at),
            rfc3339(node.last_seen_ms / 1000),
            name = escape(&node.name),
        );
    }
    out.push_str("</table>");
}

fn queue(out: &mut String, report: &StatusReport) {
    let q = &report.queue;
    let c = &q.census;
    let _ = write!(
        out,
        "<h2>Queue</h2><table id=\"queue\"><tr><th>Messages</th><td class=\"num\" data-count=\"depth\">{}</td></tr>\
         <tr><th>Oldest</th><td>{}</td></tr>",
        q.depth,
        q.oldest_age_seconds.map_or("—".to_owned(), |age| format!(
            "{} ago",
            duration_words(age)
        )),
    );
    for (key, label, count) in [
        ("due", "Due now", c.due),
        ("in_flight", "Being delivered", c.in_flight),
        ("deferred", "Deferred (waiting to retry)", c.deferred),
        ("held", "Held by an admin", c.held),
        (
            "waiting_for_token",
            "Waiting for a token",
            c.waiting_for_token,
        ),
        (
            "waiting_for_budget",
            "Waiting for a budget",
            c.waiting_for_budget,
        ),
        ("paused", "Paused", c.paused),
    ] {
        let _ = write!(
            out,
            "<tr><th>{label}</th><td class=\"num\" data-count=\"{key}\">{count}</td></tr>"
        );
    }
    out.push_str("</table>");
}

fn alerts(out: &mut String, report: &StatusReport) {
    out.push_str("<h2>Alerts firing</h2><ul id=\"alerts\">");
    if report.alerts.is_empty() {
        out.push_str("<li class=\"muted\">none</li>");
    }
    for alert in &report.alerts {
        let _ = write!(
            out,
            "<li data-alert=\"{key}\"><code>{key}</code>: {}</li>",
            escape(&alert.summary),
            key = escape(&alert.key)
        );
    }
    out.push_str("</ul>");
}

fn deliveries(out: &mut String, report: &StatusReport) {
    out.push_str(
        "<h2>Recent deliveries</h2><table id=\"deliveries\"><tr><th>When</th><th>Queue ID</th>\
         <th>Account</th><th>From</th><th>Recipients</th><th>Result</th><th>Reply</th></tr>",
    );
    for d in &report.deliveries {
        let _ = write!(
            out,
            "<tr data-queue-id=\"{id}\"><td>{}</td><td>{id}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"result {result}\">{result}</td><td class=\"reply\">{}</td></tr>",
            rfc3339(d.at),
            escape(&d.account),
            escape(if d.sender.is_empty() { "<>" } else { &d.sender }),
            d.recipients,
            escape(d.reply.as_deref().unwrap_or("")),
            id = escape(&d.queue_id),
            result = d.result.name(),
        );
    }
    out.push_str("</table>");
}

/// The devices still on TLS 1.0/1.1: what the legacy listener is kept open for.
fn outdated_tls(out: &mut String, report: &StatusReport) {
    out.push_str("<h2>Clients on TLS older than 1.2 (last 7 days)</h2>");
    if report.outdated_tls_clients.is_empty() {
        out.push_str("<p id=\"outdated-tls\" class=\"muted\">None seen.</p>");
        return;
    }
    out.push_str(
        "<table id=\"outdated-tls\"><tr><th>Address</th><th>HELO name</th><th>TLS</th>\
         <th>Cipher</th><th>Last seen</th><th>Messages</th></tr>",
    );
    for c in &report.outdated_tls_clients {
        let _ = write!(
            out,
            "<tr data-address=\"{address}\"><td>{address}</td><td>{}</td><td class=\"tls-version\">{}</td>\
             <td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            escape(&c.helo),
            c.version,
            escape(&c.cipher),
            rfc3339(c.last_seen),
            c.messages,
            address = c.address,
        );
    }
    out.push_str("</table>");
}

/// Received, delivered and deferred per minute as three bar series in one SVG.
pub fn chart(minutes: &[Minute]) -> String {
    const WIDTH: usize = 720;
    const HEIGHT: usize = 160;
    const BAR: usize = WIDTH / crate::metrics::activity::MINUTES;
    let peak = minutes
        .iter()
        .map(|m| m.received.max(m.delivered).max(m.deferred))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{}\" \
         role=\"img\" aria-label=\"messages per minute, last hour\">\
         <rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#fff\" stroke=\"#ddd\"/>",
        HEIGHT + 20
    );
    for (series, colour, offset, pick) in [
        (
            "received",
            "#1565c0",
            0,
            (|m: &Minute| m.received) as fn(&Minute) -> u64,
        ),
        ("delivered", "#2e7d32", BAR / 3, |m| m.delivered),
        ("deferred", "#ef6c00", 2 * BAR / 3, |m| m.deferred),
    ] {
        let _ = write!(svg, "<g class=\"{series}\" fill=\"{colour}\">");
        for (i, minute) in minutes.iter().enumerate() {
            let value = pick(minute);
            if value == 0 {
                continue;
            }
            let height = ((value as usize * (HEIGHT - 10)) / peak as usize).max(1);
            let _ = write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{height}\" data-minute=\"{}\" data-value=\"{value}\">\
                 <title>{} {series}: {value}</title></rect>",
                i * BAR + offset,
                HEIGHT - height,
                BAR / 3,
                minute.start,
                rfc3339(minute.start),
            );
        }
        svg.push_str("</g>");
    }
    let _ = write!(
        svg,
        "<text x=\"4\" y=\"{y}\" font-size=\"11\" fill=\"#555\">60 min ago</text>\
         <text x=\"{WIDTH}\" y=\"{y}\" font-size=\"11\" fill=\"#555\" text-anchor=\"end\">now · peak {peak}/min · \
         <tspan fill=\"#1565c0\">received</tspan> <tspan fill=\"#2e7d32\">delivered</tspan> \
         <tspan fill=\"#ef6c00\">deferred</tspan></text></svg>",
        y = HEIGHT + 15
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_cannot_become_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>&\"\r\n"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\u{FFFD}\u{FFFD}"
        );
    }

    #[test]
    fn the_chart_scales_bars_to_the_busiest_minute() {
        let mut minutes = vec![Minute::default(); 60];
        minutes[10].received = 4;
        minutes[59].delivered = 2;
        let svg = chart(&minutes);
        assert!(
            svg.contains("height=\"150\" data-minute=\"0\" data-value=\"4\""),
            "{svg}"
        );
        assert!(svg.contains("data-value=\"2\""), "{svg}");
        assert_eq!(svg.matches("<rect x=").count(), 2);
    }
}
