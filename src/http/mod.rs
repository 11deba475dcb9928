//! HTTP: the actix-web server, the route table of the FHIR API under `/fhir`, request ids and
//! tracing spans, and the single place where `FhirError` becomes an OperationOutcome response.
//! Only this module imports actix.

mod handlers;
mod negotiate;

use std::net::TcpListener;

use actix_web::dev::{Server, Service};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer, ResponseError};
use tracing::Instrument;

use crate::config::Settings;
use crate::error::FhirError;
use crate::rest::Engine;
use crate::store::Store;

pub struct AppState {
    pub engine: Engine,
    pub max_body_size: usize,
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
        if matches!(self, FhirError::Unavailable(_)) {
            b.insert_header(("Retry-After", "1"));
        }
        b.content_type(crate::fhir::Format::Json.content_type())
            .body(self.operation_outcome().to_string())
    }
}

/// The FHIR API routes (mounted under `/fhir`). Order matters: literal segments such as `_history`
/// are registered before the `{id}` patterns they would otherwise match.
fn fhir_routes(cfg: &mut web::ServiceConfig) {
    use handlers as h;
    cfg.route("", web::get().to(h::search_system))
        .route("/", web::get().to(h::search_system))
        .route("/metadata", web::get().to(h::metadata))
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
            web::resource("/{type}/{id}/{target}")
                .route(web::get().to(h::search_compartment))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/{type}/{id}")
                .route(web::get().to(h::read))
                .route(web::put().to(h::update))
                .route(web::delete().to(h::delete))
                .default_service(web::to(h::method_not_allowed)),
        )
        .service(
            web::resource("/{type}")
                .route(web::get().to(h::search_type))
                .route(web::post().to(h::create))
                .default_service(web::to(h::method_not_allowed)),
        );
}

/// The interaction engine for `settings` (opens, and migrates, the database).
pub fn engine(settings: &Settings, port: u16) -> Result<Engine, String> {
    let store = Store::open(
        settings.database_url(),
        settings.pool_size,
        std::time::Duration::from_secs(settings.pool_timeout_secs),
    )?;
    Ok(Engine {
        store,
        base_url: settings.base_url_for(port),
        default_count: settings.default_count,
        max_count: settings.max_count,
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
        tracing::info!(base_url = %engine.base_url, backend = ?engine.store.backend(),
            "Cairn is serving FHIR R4");
        let state = web::Data::new(AppState {
            engine,
            max_body_size: settings.max_body_size as usize,
        });
        let server = HttpServer::new(move || {
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
                        method = %req.method(), path = %req.path());
                    let started = std::time::Instant::now();
                    let fut = srv.call(req);
                    async move {
                        let mut res = fut.await?;
                        if let Ok(v) = HeaderValue::from_str(&id) {
                            res.headers_mut()
                                .insert(HeaderName::from_static("x-request-id"), v);
                        }
                        tracing::info!(
                            status = res.status().as_u16(),
                            ms = started.elapsed().as_millis() as u64,
                            "request done"
                        );
                        Ok(res)
                    }
                    .instrument(span)
                })
                .route("/healthz", web::get().to(handlers::healthz))
                .route("/readyz", web::get().to(handlers::readyz))
                .service(web::scope("/fhir").configure(fhir_routes))
                .default_service(web::to(handlers::not_found))
        })
        .shutdown_timeout(5)
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
