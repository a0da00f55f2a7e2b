//! Reading a libpq connection string before tokio-postgres does.
//!
//! tokio-postgres parses the connection string but knows only the
//! `sslmode`s `disable`, `prefer` and `require`, and refuses `sslrootcert`.
//! [`take_tls_options`] takes `sslmode` and `sslrootcert` out of the string
//! (the log applies them itself, see `tls.rs`) and leaves the rest to
//! tokio-postgres. [`redacted`] shows a connection string with its
//! password hidden, for `Debug`.
//!
//! Both follow tokio-postgres's own reading of the two forms: a URL
//! (`postgres://user:password@host:port/db?key=value&...`, percent-encoded)
//! and key-value pairs (`key=value ...`, values optionally `'quoted'`,
//! `\` escaping the next character).

use std::ops::Range;

/// What replaces a password in [`redacted`].
const HIDDEN: &str = "<hidden>";

/// The TLS options found in a connection string (the last of each wins, as
/// in libpq).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct TlsOptions {
    /// `sslmode`, as written.
    pub(super) sslmode: Option<String>,
    /// `sslrootcert`: a file path or `system`.
    pub(super) sslrootcert: Option<String>,
}

/// The connection string without `sslmode` and `sslrootcert`, and their
/// values; `None` if the string does not parse (tokio-postgres then reports
/// it without echoing it).
pub(super) fn take_tls_options(conninfo: &str) -> Option<(String, TlsOptions)> {
    let parsed = Parsed::new(conninfo)?;
    let mut options = TlsOptions::default();
    let mut removed = Vec::new();
    for param in &parsed.params {
        let slot = match param.key.as_str() {
            "sslmode" => &mut options.sslmode,
            "sslrootcert" => &mut options.sslrootcert,
            _ => continue,
        };
        *slot = Some(param.value.clone());
        removed.push(param.pair.clone());
    }
    let rest = match parsed.url_query {
        Some(query) => {
            let kept: Vec<&str> = parsed
                .params
                .iter()
                .filter(|p| !removed.contains(&p.pair))
                .map(|p| &conninfo[p.pair.clone()])
                .collect();
            let mut rest = conninfo[..query.start].to_owned();
            if !kept.is_empty() {
                rest.push('?');
                rest.push_str(&kept.join("&"));
            }
            rest
        }
        None => replaced(conninfo, &removed, " "),
    };
    Some((rest, options))
}

/// The connection string with the password (in a URL's user info, or a
/// `password` parameter) replaced by `<hidden>`; a string that does not
/// parse is not shown at all.
pub(super) fn redacted(conninfo: &str) -> String {
    let Some(parsed) = Parsed::new(conninfo) else {
        return "<connection string not shown: it does not parse>".into();
    };
    let mut secrets: Vec<Range<usize>> = parsed
        .params
        .iter()
        .filter(|p| p.key == "password")
        .map(|p| p.value_span.clone())
        .collect();
    secrets.extend(parsed.url_password);
    replaced(conninfo, &secrets, HIDDEN)
}

/// `text` with each of the (non-overlapping) `spans` replaced by `with`.
fn replaced(text: &str, spans: &[Range<usize>], with: &str) -> String {
    let mut spans = spans.to_vec();
    spans.sort_by_key(|span| span.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&text[at..span.start]);
        out.push_str(with);
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

/// One `key=value` parameter.
struct Param {
    /// The key, decoded.
    key: String,
    /// The value, decoded (unescaped, or percent-decoded in a URL).
    value: String,
    /// Where the whole `key=value` is in the string.
    pair: Range<usize>,
    /// Where the value is (with its quotes, if any).
    value_span: Range<usize>,
}

struct Parsed {
    params: Vec<Param>,
    /// In a URL: where the password of the user info is.
    url_password: Option<Range<usize>>,
    /// In a URL: where the query (`?...`) is, `?` included.
    url_query: Option<Range<usize>>,
}

impl Parsed {
    fn new(conninfo: &str) -> Option<Self> {
        let prefix = ["postgres://", "postgresql://"]
            .into_iter()
            .find(|prefix| conninfo.starts_with(prefix));
        match prefix {
            Some(prefix) => Self::url(conninfo, prefix.len()),
            None => Self::key_value(conninfo),
        }
    }

    fn url(url: &str, start: usize) -> Option<Self> {
        // As tokio-postgres: the user info runs to the first `@`, the
        // query starts at the first `?` after it.
        let mut url_password = None;
        let mut after_user_info = start;
        if let Some(at) = url[start..].find('@') {
            let user_info = start..start + at;
            if let Some(colon) = url[user_info.clone()].find(':') {
                url_password = Some(user_info.start + colon + 1..user_info.end);
            }
            after_user_info = user_info.end + 1;
        }
        let Some(question) = url[after_user_info..].find('?') else {
            return Some(Self {
                params: Vec::new(),
                url_password,
                url_query: None,
            });
        };
        let query = after_user_info + question..url.len();
        let mut params = Vec::new();
        let mut at = query.start + 1;
        while at < url.len() {
            let end = url[at..].find('&').map_or(url.len(), |i| at + i);
            let equals = at + url[at..end].find('=')?;
            params.push(Param {
                key: percent_decoded(&url[at..equals])?,
                value: percent_decoded(&url[equals + 1..end])?,
                pair: at..end,
                value_span: equals + 1..end,
            });
            at = end + 1;
        }
        Some(Self {
            params,
            url_password,
            url_query: Some(query),
        })
    }

    fn key_value(text: &str) -> Option<Self> {
        let mut chars = text.char_indices().peekable();
        let mut params = Vec::new();
        let end_of = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
            chars.peek().map_or(text.len(), |&(i, _)| i)
        };
        loop {
            while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
            let key_start = end_of(&mut chars);
            while chars
                .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
                .is_some()
            {}
            let key_end = end_of(&mut chars);
            if key_start == key_end {
                break;
            }
            while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
            chars.next_if(|&(_, c)| c == '=')?;
            while chars.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
            let value_start = end_of(&mut chars);
            let mut value = String::new();
            if chars.next_if(|&(_, c)| c == '\'').is_some() {
                loop {
                    match chars.next()? {
                        (_, '\'') => break,
                        (_, '\\') => value.push(chars.next()?.1),
                        (_, c) => value.push(c),
                    }
                }
            } else {
                while let Some((_, c)) = chars.next_if(|&(_, c)| !c.is_whitespace()) {
                    if c == '\\' {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    } else {
                        value.push(c);
                    }
                }
                if value.is_empty() {
                    return None;
                }
            }
            let value_end = end_of(&mut chars);
            params.push(Param {
                key: text[key_start..key_end].to_owned(),
                value,
                pair: key_start..value_end,
                value_span: value_start..value_end,
            });
        }
        Some(Self {
            params,
            url_password: None,
            url_query: None,
        })
    }
}

/// `%XX` decoded; `None` if the result is not UTF-8.
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(sslmode: Option<&str>, sslrootcert: Option<&str>) -> TlsOptions {
        TlsOptions {
            sslmode: sslmode.map(Into::into),
            sslrootcert: sslrootcert.map(Into::into),
        }
    }

    #[test]
    fn tls_options_are_taken_out_of_a_url_query() {
        let (rest, found) = take_tls_options(
            "postgres://u:p%40ss@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%40ss@h:5432/db?application_name=x");
        assert_eq!(found, options(Some("verify-full"), Some("/ca.pem")));

        let (rest, found) = take_tls_options("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(found, options(Some("require"), None));

        let (rest, found) = take_tls_options("postgres://u@h/db").unwrap();
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!(found, TlsOptions::default());
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, found) = take_tls_options("postgres://u:a?b@h/db?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://u:a?b@h/db");
        assert_eq!(found, options(Some("disable"), None));
    }

    #[test]
    fn tls_options_are_taken_out_of_key_value_pairs() {
        let (rest, found) = take_tls_options(
            r"host=h sslmode = 'verify-ca' password='it\'s secret' sslrootcert=/etc/ca\ dir/ca.pem dbname=db",
        )
        .unwrap();
        assert_eq!(
            rest.parse::<tokio_postgres::Config>()
                .unwrap()
                .get_password(),
            Some(&b"it's secret"[..])
        );
        assert!(!rest.contains("ssl"), "{rest}");
        assert_eq!(
            found,
            options(Some("verify-ca"), Some("/etc/ca dir/ca.pem"))
        );
    }

    #[test]
    fn the_last_of_a_repeated_option_wins() {
        let (_, found) = take_tls_options("host=h sslmode=disable sslmode=require").unwrap();
        assert_eq!(found.sslmode.as_deref(), Some("require"));
    }

    #[test]
    fn strings_that_do_not_parse_are_left_to_tokio_postgres() {
        for bad in ["host=h password='open", "host", "postgres://h/db?novalue"] {
            assert!(take_tls_options(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_hidden_in_every_place_they_can_be_written() {
        let cases = [
            (
                "postgres://u:s3cret@h/db?sslmode=require",
                "postgres://u:<hidden>@h/db?sslmode=require",
            ),
            (
                "postgres://u@h/db?password=s3cret&x=1",
                "postgres://u@h/db?password=<hidden>&x=1",
            ),
            (
                "host=h password='s3 cret' user=u",
                "host=h password=<hidden> user=u",
            ),
            ("host=h password=s3cret", "host=h password=<hidden>"),
            ("postgres://u@h/db", "postgres://u@h/db"),
        ];
        for (conninfo, shown) in cases {
            assert_eq!(redacted(conninfo), shown);
        }
        assert!(!redacted("host=h password='s3cret").contains("s3cret"));
    }
}
