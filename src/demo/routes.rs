//! The portal's pages and API calls, by path. Caching headers are as
//! inconsistent as on the real thing: statics and news carry none, the home
//! page is cacheable, everything tied to a session is `no-store`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::Shared;
use super::assets::{NEWS_HTML, NOT_ALLOWED_HTML, NOT_FOUND_HTML, login_html, static_asset};
use super::load::think;
use super::response::{Body, HTML, page, private_json, set_header};
use super::sessions::SESSION_COOKIE;

/// A client trickling its request body must not hold a slot forever.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pronote's API calls are small JSON documents; anything bigger is abuse.
const MAX_BODY: usize = 1 << 20;
/// The login page is the expensive one on a real portal (session creation,
/// ENT handshake), hence its higher cost.
const LOGIN_COST: f64 = 3.0;
const APPEL_PREFIX: &str = "/pronote/appelfonction/";

const SUBJECTS: [&str; 5] = [
    "Mathématiques",
    "Français",
    "Histoire-Géographie",
    "Anglais",
    "Physique-Chimie",
];

pub(super) async fn route(shared: &Shared, req: Request<Incoming>, level: usize) -> Response<Body> {
    let is_read = matches!(*req.method(), Method::GET | Method::HEAD);
    let path = req.uri().path().to_owned();
    if let Some((content_type, body)) = static_asset(&path) {
        // Deliberately no caching headers: that is the legacy behaviour digue
        // has to work around with a forced TTL.
        return if is_read {
            page(StatusCode::OK, content_type, body)
        } else {
            method_not_allowed("GET, HEAD")
        };
    }
    match path.as_str() {
        "/" | "/news" | "/pronote/eleve.html" | "/api/notes" if !is_read => {
            method_not_allowed("GET, HEAD")
        }
        "/" => {
            think(shared, level, 1.0).await;
            shared.home.respond(req.headers())
        }
        "/news" => {
            think(shared, level, 1.0).await;
            page(StatusCode::OK, HTML, NEWS_HTML)
        }
        "/pronote/eleve.html" => {
            think(shared, level, LOGIN_COST).await;
            login(shared)
        }
        "/api/notes" => match shared.sessions.find(req.headers()) {
            Some(session) => {
                think(shared, level, 1.0).await;
                notes(&session)
            }
            None => unauthorized(),
        },
        p if p.starts_with(APPEL_PREFIX) => {
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            appel_fonction(shared, req, level, &p[APPEL_PREFIX.len()..]).await
        }
        _ => page(StatusCode::NOT_FOUND, HTML, NOT_FOUND_HTML),
    }
}

fn login(shared: &Shared) -> Response<Body> {
    let session = shared.sessions.open();
    let short = short_id(&session);
    let mut resp = page(StatusCode::OK, HTML, login_html(short));
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    set_header(
        h,
        header::SET_COOKIE,
        &format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly"),
    );
    resp
}

fn notes(session: &str) -> Response<Body> {
    // Grades derive from the session so that two students visibly differ.
    let mut hasher = DefaultHasher::new();
    session.hash(&mut hasher);
    let seed = hasher.finish();
    let notes: Vec<_> = SUBJECTS
        .iter()
        .enumerate()
        .map(|(i, subject)| {
            let half_points = (seed >> (i * 8)) % 41;
            json!({ "matiere": subject, "note": half_points as f64 / 2.0, "sur": 20 })
        })
        .collect();
    private_json(
        StatusCode::OK,
        &json!({
            "session": session,
            "eleve": short_id(session),
            "periode": "Trimestre 2",
            "notes": notes,
        }),
    )
}

async fn appel_fonction(
    shared: &Shared,
    req: Request<Incoming>,
    level: usize,
    fonction: &str,
) -> Response<Body> {
    let Some(session) = shared.sessions.find(req.headers()) else {
        return unauthorized();
    };
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await;
    let received = match collected {
        Ok(Ok(body)) => body.to_bytes().len(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            return private_json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({ "erreur": "requête trop volumineuse", "code": 413 }),
            );
        }
        Ok(Err(_)) => {
            return private_json(
                StatusCode::BAD_REQUEST,
                &json!({ "erreur": "requête illisible", "code": 400 }),
            );
        }
        Err(_) => {
            return private_json(
                StatusCode::REQUEST_TIMEOUT,
                &json!({ "erreur": "délai de réception dépassé", "code": 408 }),
            );
        }
    };
    think(shared, level, 1.0).await;
    private_json(
        StatusCode::OK,
        &json!({ "session": session, "fonction": fonction, "octets_recus": received }),
    )
}

fn unauthorized() -> Response<Body> {
    private_json(
        StatusCode::UNAUTHORIZED,
        &json!({ "erreur": "session absente ou expirée, veuillez vous reconnecter", "code": 401 }),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = page(StatusCode::METHOD_NOT_ALLOWED, HTML, NOT_ALLOWED_HTML);
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn short_id(session: &str) -> &str {
    session.get(..6).unwrap_or(session)
}
