//! `GET /adapters/{name}/logs`: the query, `since` parsing, and the streamed response (plain
//! text lines, or NDJSON [`LogLine`]s when asked for by `Accept`).

use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, header};
use mcp_gateway_core::{LogLine, LogQuery, LogStream};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;

/// The media type of the NDJSON variant of the logs response.
pub const NDJSON: &str = "application/x-ndjson";

/// Query parameters of `GET /adapters/{name}/logs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsParams {
    /// Only this replica (its ordinal, from 0). Default: every replica, each text line then
    /// prefixed with `[N] `.
    pub replica: Option<u32>,
    /// Same as `replica` (microsoft/mcp-gateway's name for it).
    pub instance: Option<u32>,
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only lines written at or after this time: RFC 3339 (`2025-11-24T16:00:00Z`) or a
    /// duration back from now (`90s`, `10m`, `2h`, `1d`).
    #[param(
        min_length = 1,
        pattern = r"^(([0-9]+(ms|s|m|h|d))+|[0-9]+|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
    )]
    pub since: Option<String>,
    /// Keep the response open and send lines as replicas write them.
    pub follow: Option<bool>,
    /// The lines of the replica's previous instance (one that restarted; Kubernetes runtime).
    pub previous: Option<bool>,
}

impl LogsParams {
    /// The port's query, or a 400 naming the bad parameter.
    pub fn to_query(&self, now: SystemTime) -> Result<LogQuery, ApiError> {
        let replica = match (self.replica, self.instance) {
            (Some(r), Some(i)) if r != i => {
                return Err(ApiError::field(
                    "invalid-query",
                    "instance",
                    format!("replica={r} and instance={i} disagree: give only one of them"),
                ));
            }
            (r, i) => r.or(i),
        };
        let since = match &self.since {
            None => None,
            Some(s) => Some(parse_since(s, now).map_err(|why| {
                ApiError::field(
                    "invalid-query",
                    "since",
                    format!("since={s:?} is invalid: {why}"),
                )
            })?),
        };
        Ok(LogQuery {
            replica,
            tail: self.tail,
            since,
            follow: self.follow.unwrap_or(false),
            previous: self.previous.unwrap_or(false),
        })
    }
}

/// Answers with the stream: NDJSON if `Accept` names it, else `text/plain`.
pub fn response(headers: &HeaderMap, query: &LogQuery, lines: LogStream) -> Response {
    let ndjson = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case(NDJSON)
        });
    let prefix = query.replica.is_none();
    let body = Body::from_stream(lines.map(move |line| {
        Ok::<_, Infallible>(if ndjson {
            ndjson_line(&line)
        } else {
            text_line(&line, prefix)
        })
    }));
    let content_type = if ndjson {
        NDJSON
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if query.follow {
        // Reverse proxies that buffer (nginx) would hold a followed stream back.
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    }
    response
}

fn ndjson_line(line: &LogLine) -> Bytes {
    let mut out = serde_json::to_vec(line).unwrap_or_default();
    out.push(b'\n');
    out.into()
}

fn text_line(line: &LogLine, prefix: bool) -> Bytes {
    let text = line.line.trim_end_matches(['\r', '\n']);
    if prefix {
        format!("[{}] {text}\n", line.replica).into()
    } else {
        format!("{text}\n").into()
    }
}

/// `since`: an RFC 3339 time, or a duration back from `now`.
pub fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let s = s.trim();
    if s.contains('T') || s.contains('t') {
        return parse_rfc3339(s);
    }
    let ago = parse_duration(s)?;
    Ok(now
        .checked_sub(ago)
        .filter(|t| *t >= UNIX_EPOCH)
        .unwrap_or(UNIX_EPOCH))
}

/// `500ms`, `90s`, `10m`, `2h`, `1d`, combinations such as `1h30m`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str =
        "give an RFC 3339 time (2025-11-24T16:00:00Z) or a duration (90s, 10m, 2h, 1d)";
    if s.is_empty() {
        return Err(HINT.into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().map_err(|_| HINT.to_owned())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(HINT.into()),
        };
        rest = &rest[unit..];
        let add = n
            .checked_mul(millis)
            .ok_or_else(|| "duration is too long".to_owned())?;
        total = total
            .checked_add(Duration::from_millis(add))
            .ok_or_else(|| "duration is too long".to_owned())?;
    }
    Ok(total)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
fn parse_rfc3339(s: &str) -> Result<SystemTime, String> {
    const HINT: &str = "expected an RFC 3339 time such as 2025-11-24T16:00:00Z";
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = s.get(from..from + len).ok_or(HINT)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(HINT.into());
        }
        part.parse::<i64>().map_err(|_| HINT.into())
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(HINT.into());
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(format!("{HINT} (a field is out of range)"));
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(HINT.into());
        }
        let frac = &s[start..i.min(start + 9)];
        nanos = format!("{frac:0<9}").parse().map_err(|_| HINT.to_owned())?;
    }
    let offset_secs = match &s[i..] {
        "Z" | "z" => 0,
        tz if tz.len() == 6
            && matches!(tz.as_bytes()[0], b'+' | b'-')
            && tz.as_bytes()[3] == b':' =>
        {
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return Err(format!("{HINT} (the offset is out of range)"));
            }
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(HINT.into()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    if secs < 0 {
        return Ok(UNIX_EPOCH);
    }
    Ok(UNIX_EPOCH + Duration::new(secs as u64, nanos))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_gateway_core::rfc3339;

    #[test]
    fn since_accepts_rfc3339_times() {
        let now = SystemTime::now();
        for secs in [0u64, 951_782_400, 1_764_000_000, 4_102_444_800] {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(parse_since(&rfc3339(t), now), Ok(t));
        }
        let t = parse_since("2025-11-24T17:30:00.250+01:30", now).unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::new(1_764_000_000, 250_000_000));
        for bad in [
            "2025-13-01T00:00:00Z",
            "2025-02-30T00:00:00Z",
            "2025-11-24T16:00:00",
            "2025-11-24T16:00Z",
            "T",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn since_accepts_durations_back_from_now() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let back = |s: &str| now.duration_since(parse_since(s, now).unwrap()).unwrap();
        assert_eq!(back("90s"), Duration::from_secs(90));
        assert_eq!(back("10m"), Duration::from_secs(600));
        assert_eq!(back("1h30m"), Duration::from_secs(5400));
        assert_eq!(back("1d"), Duration::from_secs(86_400));
        assert_eq!(back("500ms"), Duration::from_millis(500));
        assert_eq!(back("15"), Duration::from_secs(15));
        assert_eq!(parse_since("100000d", now), Ok(UNIX_EPOCH));
        for bad in ["", "10x", "m", "-5s", "99999999999999999999d"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn replica_and_instance_are_synonyms() {
        let p = LogsParams {
            instance: Some(2),
            ..Default::default()
        };
        assert_eq!(p.to_query(SystemTime::now()).unwrap().replica, Some(2));
        let p = LogsParams {
            replica: Some(1),
            instance: Some(2),
            ..Default::default()
        };
        assert!(p.to_query(SystemTime::now()).is_err());
    }
}
