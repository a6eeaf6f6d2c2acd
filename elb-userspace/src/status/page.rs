//! The status page: one HTML document with its CSS and script inlined,
//! built into the binary. It loads nothing else: it fetches
//! `/__erulb__/status.json` every few seconds and draws it.
//!
//! The page itself holds no data, so it is served to any address the admin
//! API admits, without the token: a browser cannot send a bearer token on a
//! plain navigation. The script takes the token from the URL fragment
//! (`#token=...`, never sent to the server) or asks for it, keeps it in the
//! tab's `sessionStorage`, and sends it as `Authorization: Bearer` with each
//! fetch of the JSON, which needs it like every admin endpoint.
use http::{HeaderValue, Response, StatusCode, header};

use crate::http_util::{Body, full};

/// The page, assembled at compile time.
pub const PAGE: &str = concat!(
    include_str!("page/head.html"),
    "<style>\n",
    include_str!("page/page.css"),
    "</style>\n",
    include_str!("page/body.html"),
    "<script>\n",
    include_str!("page/page.js"),
    "</script>\n</body>\n</html>\n",
);

/// Nothing from elsewhere: no external scripts, styles, images or fetches.
/// Inline script and style are the page's own.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

pub fn response() -> Response<Body> {
    let mut response = Response::new(full(PAGE));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "//cdn", "src=", "@import", "url("] {
            assert!(
                !PAGE.contains(needle),
                "the status page must be self-contained, found {needle:?}"
            );
        }
        assert!(PAGE.starts_with("<!doctype html>"));
        assert!(PAGE.contains("/__erulb__/status.json"));
        assert!(PAGE.trim_end().ends_with("</html>"));
    }

    #[test]
    fn the_data_is_never_put_in_as_html() {
        // Names, reasons and errors come from the configuration and the
        // network: the script builds text nodes only.
        assert!(!PAGE.contains("innerHTML"));
        assert!(!PAGE.contains("insertAdjacentHTML"));
        assert!(!PAGE.contains("document.write"));
    }
}
