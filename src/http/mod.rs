//! HTTP: the actix-web server, the route table of the FHIR API under `/fhir`, request ids and
//! tracing spans, and the single place where `FhirError` becomes an OperationOutcome response.
//! Only this module imports actix.

mod handlers;
mod negotiate;
pub mod openapi;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use actix_web::http::StatusCode;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpMessage, HttpResponse, HttpServer, ResponseError};
use tracing::Instrument;

use crate::audit::{self, AuditSeed, Auditor};
use crate::auth::{Access, Auth};
use crate::config::Settings;
use crate::error::FhirError;
use crate::rest::Engine;
use crate::store::Store;

pub struct AppState {
    pub engine: Engine,
    pub auth: Arc<Auth>,
    /// None when auditing is off (`--audit disabled`).
    pub auditor: Option<Auditor>,
    pub max_body_size: usize,
    /// Per-client token buckets; None when rate limiting is off.
    pub rate_limiter: Option<Arc<RateLimits>>,
}

/// Per-client token buckets (one per client id, or per address before authentication), pruned
/// now and then of buckets that are full again, so that many passing addresses do not grow the
/// map for ever.
pub struct RateLimits {
    limiter: governor::DefaultKeyedRateLimiter<String>,
    checks: std::sync::atomic::AtomicU64,
}

/// Checks between two prunings of the buckets.
const PRUNE_EVERY: u64 = 4096;

impl RateLimits {
    pub fn new(per_second: std::num::NonZeroU32, burst: std::num::NonZeroU32) -> RateLimits {
        RateLimits {
            limiter: governor::RateLimiter::keyed(
                governor::Quota::per_second(per_second).allow_burst(burst),
            ),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Takes one request from `key`'s bucket.
    fn check(&self, key: String) -> Result<(), governor::NotUntil<governor::clock::QuantaInstant>> {
        let n = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune();
        }
        self.limiter.check_key(&key)
    }

    /// Drops the buckets that are indistinguishable from new ones.
    fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

impl AppState {
    /// Takes one request from `key`'s bucket; 429 when it is empty. The key is made only when
    /// rate limiting is on.
    fn rate_limit(&self, key: impl FnOnce() -> String) -> Result<(), FhirError> {
        use governor::clock::Clock;
        let Some(limiter) = &self.rate_limiter else {
            return Ok(());
        };
        limiter.check(key()).map_err(|not_until| {
            crate::metrics::RATE_LIMITED.inc();
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            FhirError::TooManyRequests {
                message: format!(
                    "too many requests from this client; retry in {} ms",
                    wait.as_millis().max(1)
                ),
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }
}

/// The route pattern, method, status and resource type of an answered request, counted.
fn observe(req: &actix_web::HttpRequest, status: StatusCode, elapsed: std::time::Duration) {
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let ty = req
        .path()
        .strip_prefix("/fhir/")
        .and_then(|p| p.split('/').next())
        .filter(|t| crate::fhir::is_enabled(t))
        .unwrap_or("");
    let method = req.method().as_str();
    crate::metrics::REQUESTS
        .with_label_values(&[route.as_str(), method, status.as_str(), ty])
        .inc();
    crate::metrics::LATENCY
        .with_label_values(&[route.as_str(), method])
        .observe(elapsed.as_secs_f64());
}

/// What a handler tells the audit middleware about its interaction: the entities it touched, or
/// that its AuditEvent is already stored (writes record theirs in their own transaction).
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    pub entities: Vec<audit::Entity>,
    pub recorded: bool,
    /// The interaction, when the method and path alone do not tell (a batch is POSTed where a
    /// transaction is).
    pub interaction: Option<audit::Interaction>,
}

impl AppState {
    /// The start of this request's AuditEvent, when auditing is on.
    pub fn audit_seed(&self, req: &actix_web::HttpRequest, access: &Access) -> Option<AuditSeed> {
        self.auditor.as_ref()?;
        let (interaction, _) = audit::infer(req.method().as_str(), req.path());
        let addr = req.peer_addr().map(|a| a.ip().to_string());
        Some(AuditSeed::new(
            interaction,
            Some(access),
            addr.as_deref(),
            &self.engine.base_url,
        ))
    }
}

/// Records one AuditEvent per FHIR request, durably, before the response leaves: from the handler's
/// note when there is one, otherwise from the method and path (failures, even before
/// authentication). If the audit store fails, the client gets 503 instead of the answer.
async fn record_audit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let st = req.app_data::<web::Data<AppState>>().cloned();
    let Some((st, auditor)) = st.and_then(|s| s.auditor.clone().map(|a| (s, a))) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    // The request cannot be cloned before routing; what the event needs is taken now, the rest
    // from the response's request afterwards. (Inner layers answer errors as responses.)
    let addr = req.peer_addr().map(|a| a.ip().to_string());
    let res = next.call(req).await?.map_into_boxed_body();
    // Nothing after this layer reads the note or the caller: taken, not cloned.
    let note = res.request().extensions_mut().remove::<AuditNote>();
    if note.as_ref().is_some_and(|n| n.recorded) {
        return Ok(res);
    }
    let access = res.request().extensions_mut().remove::<Arc<Access>>();
    let (inferred, target) = audit::infer(res.request().method().as_str(), res.request().path());
    let interaction = note
        .as_ref()
        .and_then(|n| n.interaction)
        .unwrap_or(inferred);
    let entities = match note {
        Some(n) if !n.entities.is_empty() || n.interaction.is_none() => n.entities,
        _ => target.iter().map(|t| audit::resource_entity(t)).collect(),
    };
    let seed = AuditSeed::new(
        interaction,
        access.as_deref(),
        addr.as_deref(),
        &st.engine.base_url,
    );
    match auditor
        .record(seed.event(res.status().as_u16(), entities))
        .await
    {
        Ok(()) => Ok(res),
        Err(e) => {
            let (req, _) = res.into_parts();
            Ok(ServiceResponse::new(req, e.error_response()))
        }
    }
}

/// `WWW-Authenticate` text: quotes and control characters would break the header.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .collect()
}

impl ResponseError for FhirError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if let FhirError::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
        let mut b = HttpResponse::build(self.status_code());
        match self {
            FhirError::Unavailable(_) => {
                b.insert_header(("Retry-After", "1"));
            }
            FhirError::TooManyRequests { retry_after, .. } => {
                b.insert_header(("Retry-After", retry_after.to_string()));
            }
            // RFC 6750 section 3: a challenge, with the error code once a token was presented.
            FhirError::Unauthorized { message, presented } => {
                let challenge = if *presented {
                    format!(
                        "Bearer realm=\"cairn\", error=\"invalid_token\", error_description=\"{}\"",
                        header_safe(message)
                    )
                } else {
                    "Bearer realm=\"cairn\"".to_string()
                };
                b.insert_header((WWW_AUTHENTICATE, challenge));
            }
            FhirError::Forbidden(_) => {
                b.insert_header((
                    WWW_AUTHENTICATE,
                    "Bearer realm=\"cairn\", error=\"insufficient_scope\"",
                ));
            }
            _ => {}
        }
        b.content_type(crate::fhir::Format::Json.content_type())
            .body(self.operation_outcome().to_string())
    }
}

/// The FHIR API routes (mounted under `/fhir`). Routes are tried in order, and each pattern with
/// parameters is a regex match. Read by id is the most frequent request, so `/{type}/{id}` comes
/// first for the paths `plain_instance_path` lets through; otherwise the two-segment paths that it
/// would also match (literal segments such as `_history`) come first, then `/{type}/{id}`, then the
/// longer paths, which cannot match two segments.
fn fhir_routes(cfg: &mut web::ServiceConfig) {
    use handlers as h;
    let instance = || {
        web::resource("/{type}/{id}")
            .route(web::get().to(h::read))
            .route(web::put().to(h::update))
            .route(web::patch().to(h::patch))
            .route(web::delete().to(h::delete))
            .default_service(web::to(h::method_not_allowed))
    };
    // Tried first for the paths that none of the routes it overlaps could match
    // (`plain_instance_path`), and again at its place for every other path.
    cfg.service(instance().guard(actix_web::guard::fn_guard(plain_instance_path)))
        .route("", web::get().to(h::search_system))
        .route("/", web::get().to(h::search_system))
        .route("", web::post().to(h::bundle))
        .route("/", web::post().to(h::bundle))
        .route("/metadata", web::get().to(h::metadata))
        .route(
            "/.well-known/smart-configuration",
            web::get().to(h::smart_configuration),
        )
        .route("/_history", web::get().to(h::history_system))
        .route("/_search", web::post().to(h::search_post))
        .service(
            web::resource("/{type}/_history")
                .route(web::get().to(h::history_type))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/{type}/_search")
                .route(web::post().to(h::search_post))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/QuestionnaireResponse/$extract")
                .route(web::post().to(h::extract))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(instance())
        .service(
            web::resource("/{type}/{id}/_history/{vid}")
                .route(web::get().to(h::vread))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/{type}/{id}/_history")
                .route(web::get().to(h::history_instance))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/QuestionnaireResponse/{id}/$extract")
                .route(web::get().to(h::extract_instance))
                .route(web::post().to(h::extract_instance))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/CarePlan/{id}/$progress")
                .route(web::get().to(h::progress))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/Patient/{id}/$everything")
                .route(web::get().to(h::patient_everything))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/CarePlan/{id}/$everything")
                .route(web::get().to(h::careplan_everything))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/{type}/{id}/$diff")
                .route(web::get().to(h::diff))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/{type}/{id}/{target}")
                .route(web::get().to(h::search_compartment))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/{type}")
                .route(web::get().to(h::search_type))
                .route(web::post().to(h::create))
                .route(web::put().to(h::conditional_update))
                .route(web::delete().to(h::conditional_delete))
                .default_service(web::to(h::method_not_allowed)),
        );
}

/// Whether `/fhir/{type}/{id}` may be routed before the routes it overlaps: `/{type}/_history`,
/// `/{type}/_search`, `/QuestionnaireResponse/$extract` (each a regex match in actix's router,
/// which a read would otherwise pay for) and `/.well-known/smart-configuration`. Anything else,
/// and a path with escapes (the router matches a partly decoded path), keeps the usual order.
fn plain_instance_path(ctx: &actix_web::guard::GuardContext) -> bool {
    let path = ctx.head().uri.path();
    let mut segments = path.rsplit('/');
    let (Some(id), Some(ty)) = (segments.next(), segments.next()) else {
        return false;
    };
    crate::fhir::is_enabled(ty)
        && !path.contains('%')
        && !matches!(id, "_history" | "_search" | "$extract")
}

/// The paths under `/fhir` that need no token (SMART App Launch 2.x: discovery is public).
const OPEN_PATHS: &[&str] = &["/fhir/metadata", "/fhir/.well-known/smart-configuration"];

/// Authenticates every FHIR request (except `OPEN_PATHS`) before routing, so that nothing about
/// the data, not even whether an id exists, is told to a caller without a valid token. The caller
/// goes into the request's extensions for the handlers.
async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let path = req.path();
    if !OPEN_PATHS.contains(&path.trim_end_matches('/')) {
        let st = req
            .app_data::<web::Data<AppState>>()
            .cloned()
            .ok_or_else(|| FhirError::Internal("no application state".into()))?;
        // UTF-8 checked a word at a time (`HeaderValue::to_str` tests a token's every byte for
        // visible ASCII); a token that is not ASCII is refused as invalid by the validator.
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok());
        let access = match st.auth.authenticate(header).await {
            Ok(a) => a,
            // Answered here, as a response, so the audit layer around still sees the request.
            Err(e) => {
                let reason = if header.is_some() {
                    "invalid_token"
                } else {
                    "no_token"
                };
                crate::metrics::AUTH_FAILURES
                    .with_label_values(&[reason])
                    .inc();
                return Ok(req.into_response(FhirError::from(e).error_response()));
            }
        };
        if let Err(e) = st.rate_limit(|| format!("client:{}", access.who())) {
            return Ok(req.into_response(e.error_response()));
        }
        // Who is calling, on the request's span (and so on every log line of it), when it is
        // logged at all.
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("client", access.who());
            if let Some(u) = &access.fhir_user {
                span.record("fhir_user", u.as_str());
            }
            if let Some(p) = &access.patient {
                span.record("patient", p.as_str());
            }
        }
        req.extensions_mut().insert(access);
    } else if let Some(st) = req.app_data::<web::Data<AppState>>() {
        // No client to name: the caller's address is the key.
        let key = || {
            format!(
                "addr:{}",
                req.peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default()
            )
        };
        if let Err(e) = st.rate_limit(key) {
            return Ok(req.into_response(e.error_response()));
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_boxed_body)
}

/// The benchmark's ceiling: actix, configured as Cairn's server is, answering every GET with the
/// same `body` (no auth, no database, no audit). What this hardware allows an actix server.
pub async fn serve_static(listen: &str, body: String) -> std::io::Result<()> {
    let body = web::Bytes::from(body);
    HttpServer::new(move || {
        let body = body.clone();
        App::new().default_service(web::to(move || {
            let body = body.clone();
            async move {
                HttpResponse::Ok()
                    .content_type("application/fhir+json")
                    .body(body)
            }
        }))
    })
    .bind(listen)?
    .run()
    .await
}

/// The interaction engine for `settings` (opens, and migrates, the database).
pub fn engine(settings: &Settings, port: u16) -> Result<Engine, String> {
    let store = Store::open_with_deadline(
        settings.database_url(),
        settings.pool_size,
        std::time::Duration::from_secs(settings.pool_timeout_secs),
        (settings.request_timeout_secs > 0)
            .then(|| std::time::Duration::from_secs(settings.request_timeout_secs)),
    )?;
    let store = match settings.read_cache_mb {
        0 => store,
        mb => store.with_read_cache(settings.database_url(), mb * 1024 * 1024),
    };
    Ok(Engine {
        store,
        base_url: settings.base_url_for(port),
        default_count: settings.default_count,
        max_count: settings.max_count,
        limits: crate::rest::Limits {
            referential_integrity: settings.writes.referential_integrity,
            conditional_delete_max: settings.writes.conditional_delete_max as usize,
            bundle_max_entries: settings.writes.bundle_max_entries as usize,
        },
    })
}

/// A bound, not yet running server (zero2prod's `Application`): tests build it on port 0.
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub fn build(settings: &Settings) -> Result<Application, String> {
        let listener = TcpListener::bind(&settings.listen)
            .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let engine = engine(settings, port)?;
        let auth = Auth::from_settings(settings, port)?;
        let loaded = engine
            .load_instruments_now(crate::care::instruments::embedded())
            .map_err(|e| format!("cannot load the built-in instruments: {e}"))?;
        for (name, id, created) in loaded.iter().filter(|l| l.2) {
            tracing::info!(instrument = %name, id = %id, created, "instrument loaded");
        }
        let auditor = match settings.audit {
            crate::config::AuditMode::Enabled => Some(Auditor::start(
                engine.store.clone(),
                engine.base_url.clone(),
            )),
            crate::config::AuditMode::Disabled => {
                tracing::warn!(
                    "AUDITING IS DISABLED (--audit disabled): no access is recorded. Use this to \
                     measure the audit's cost, never with real data."
                );
                None
            }
        };
        if auth.enabled {
            auth.prefetch();
        } else {
            tracing::warn!(
                "AUTHORIZATION IS DISABLED (--auth disabled): every request is allowed without a \
                 token. Never run like this with real data."
            );
        }
        tracing::info!(base_url = %engine.base_url, backend = ?engine.store.backend(),
            auth = if auth.enabled { "enabled" } else { "DISABLED" },
            "Cairn is serving FHIR R4");
        let state = web::Data::new(AppState {
            engine,
            auth: Arc::new(auth),
            auditor,
            max_body_size: settings.max_body_size as usize,
            rate_limiter: std::num::NonZeroU32::new(settings.rate_limit_per_second).map(|rate| {
                let burst = std::num::NonZeroU32::new(settings.rate_limit_burst).unwrap_or(rate);
                Arc::new(RateLimits::new(rate, burst))
            }),
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap_fn(|req, srv| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .filter(|v| !v.is_empty() && v.len() <= 200)
                        .map(str::to_string)
                        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                    let span = tracing::info_span!("request", request_id = %id,
                        method = %req.method(), path = %req.path(),
                        client = tracing::field::Empty, fhir_user = tracing::field::Empty,
                        patient = tracing::field::Empty);
                    let started = std::time::Instant::now();
                    let fut = srv.call(req);
                    async move {
                        let mut res = fut.await?;
                        if let Ok(v) = HeaderValue::from_str(&id) {
                            res.headers_mut()
                                .insert(HeaderName::from_static("x-request-id"), v);
                        }
                        let elapsed = started.elapsed();
                        observe(res.request(), res.status(), elapsed);
                        tracing::info!(
                            status = res.status().as_u16(),
                            ms = elapsed.as_millis() as u64,
                            "request done"
                        );
                        Ok(res)
                    }
                    .instrument(span)
                })
                .route("/healthz", web::get().to(handlers::healthz))
                .route("/readyz", web::get().to(handlers::readyz))
                .route("/metrics", web::get().to(handlers::metrics))
                .route("/openapi.json", web::get().to(handlers::openapi))
                .route(
                    "/.well-known/smart-configuration",
                    web::get().to(handlers::smart_configuration),
                )
                .route("/auth/token", web::post().to(handlers::token))
                .route("/auth/jwks", web::get().to(handlers::jwks))
                .service(
                    web::scope("/fhir")
                        .wrap(from_fn(authenticate))
                        .wrap(from_fn(record_audit))
                        .configure(fhir_routes),
                )
                .default_service(web::to(handlers::not_found))
        })
        .shutdown_timeout(5);
        // 0 keeps actix's own default: one worker per CPU core.
        if settings.workers > 0 {
            server = server.workers(settings.workers.into());
        }
        let server = server
            .listen(listener)
            .map_err(|e| format!("cannot serve: {e}"))?
            .run();
        Ok(Application { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT, then finishes in-flight requests and returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimits;
    use std::num::NonZeroU32;

    #[test]
    fn full_buckets_are_pruned() {
        // One request per bucket, refilled in 100 ms: slow enough that a loaded machine cannot
        // refill a bucket between two checks, fast enough for the test.
        let limits = RateLimits::new(NonZeroU32::new(10).unwrap(), NonZeroU32::new(1).unwrap());
        for i in 0..100 {
            assert!(limits.check(format!("10.0.0.{i}")).is_ok());
        }
        // A second request at once (the last client's) finds its bucket empty.
        assert!(limits.check("10.0.0.99".into()).is_err());
        assert_eq!(limits.limiter.len(), 100);
        // Refilled after 100 ms; then a pruning forgets them all.
        std::thread::sleep(std::time::Duration::from_millis(250));
        limits.prune();
        assert_eq!(limits.limiter.len(), 0);
        assert!(limits.check("10.0.0.1".into()).is_ok());
    }
}
