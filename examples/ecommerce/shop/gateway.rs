//! The API gateway: the single entry point (server-side discovery: clients
//! know only the gateway, which finds the services' instances in the
//! registry and balances over them). JWT bearer authentication, REST and
//! JSON outside, gRPC to the users service, JSON errors with the right
//! status, request logging with tower-http's trace layer. Placing orders
//! goes through a per-user rate limit (the JWT subject is the key; 429 with
//! `Retry-After`), then a bulkhead and an adaptive concurrency limit in
//! front of the orders service; catalogue reads go through a cache that
//! answers from stale data when the catalogue fails, hedging across the
//! products instances, and a fallback (an empty catalogue) when nothing is
//! cached.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use palisade::BoxError;
use palisade::pipeline::{PipelineError, Stage};
use palisade::rate_limit::{RateLimited, TooManyKeys};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use super::http_json::{ApiCall, ApiError, JsonReply, UpstreamError, upstream_error};
use super::order_saga::PipelinedClient;
use super::proto::{CreateUserRequest, GetUserRequest, LoginRequest, User};
use super::users::UsersGrpc;

/// How long a token is valid.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// A gateway client whose layers outside the pipeline (the per-user rate
/// limit, the fallback) answer with any error.
pub type GatewayClient = tower::util::BoxCloneSyncService<ApiCall, JsonReply, BoxError>;

/// The gateway's clients of the HTTP services.
pub struct GatewayClients {
    /// The catalogue list: fallback, then cache, hedging, retry, breaker.
    pub catalogue: GatewayClient,
    /// One product: cache, hedging, retry, breaker (no fallback).
    pub product: GatewayClient,
    /// Reading orders: bulkhead and adaptive limit.
    pub orders: PipelinedClient,
    /// Placing orders: the per-user rate limit, then as `orders`.
    pub place_orders: GatewayClient,
}

/// The gateway's clients and signing key.
pub struct Gateway {
    encoding: EncodingKey,
    decoding: DecodingKey,
    users: UsersGrpc,
    clients: GatewayClients,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl Gateway {
    /// A gateway signing its tokens (HS256) with `secret`.
    pub fn new(secret: &[u8], users: UsersGrpc, clients: GatewayClients) -> Arc<Self> {
        Arc::new(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            users,
            clients,
        })
    }

    /// The gateway's routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/api/users", post(sign_up))
            .route("/api/users/login", post(log_in))
            .route("/api/users/me", get(me))
            .route("/api/products", get(products))
            .route("/api/products/{id}", get(product))
            .route("/api/orders", post(place_order))
            .route("/api/orders/{id}", get(order))
            .fallback(|| async { ApiError::not_found("no such route") })
            .with_state(Arc::clone(self))
            .layer(
                TraceLayer::new_for_http().on_response(DefaultOnResponse::new().level(Level::INFO)),
            )
    }

    /// A token for user `id`.
    pub fn token_for(&self, id: i64) -> Result<String, ApiError> {
        let exp = (SystemTime::now() + TOKEN_LIFETIME)
            .duration_since(UNIX_EPOCH)
            .map_err(ApiError::internal)?
            .as_secs();
        let claims = Claims {
            sub: id.to_string(),
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// The user a request's bearer token names; 401 without a valid one.
    fn authenticate(&self, headers: &HeaderMap) -> Result<i64, ApiError> {
        let unauthorized = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, why.to_owned());
        let header = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing bearer token"))?
            .to_str()
            .map_err(|_| unauthorized("unreadable authorization header"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| unauthorized("the authorization header must be 'Bearer <token>'"))?;
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &self.decoding,
            &Validation::new(Algorithm::HS256),
        )
        .map_err(|error| unauthorized(&format!("invalid token: {error}")))?;
        data.claims
            .sub
            .parse()
            .map_err(|_| unauthorized("invalid token: its subject is not a user id"))
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("invalid JSON body: {error}")))
}

fn grpc_error(status: tonic::Status) -> ApiError {
    let code = match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::AlreadyExists => StatusCode::CONFLICT,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    ApiError::new(code, status.message().to_owned())
}

fn user_json(user: User) -> Value {
    json!({"id": user.id, "email": user.email, "name": user.name, "created_at": user.created_at})
}

/// A service's failure, as the gateway answers it: a service's own 5xx
/// answer is passed on; the gateway's own limits answer 429 or 503.
fn pipeline_error(service: &str, error: PipelineError) -> Response {
    if let Some(upstream) = upstream_error(&error) {
        if upstream.body.is_object() {
            return (upstream.status, Json(upstream.body.clone())).into_response();
        }
    }
    if error.is_rejection() && error.stage() == Stage::RateLimiter {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many requests to {service}"),
        )
        .into_response();
    }
    ApiError::unavailable(format!("{service} unavailable: {error}")).into_response()
}

/// A failure of a gateway client: a per-user rate limit answers 429 with
/// `Retry-After`; a pipeline's failure as [`pipeline_error`]; a service's
/// own 5xx answer is passed on; anything else is 503.
fn gateway_error(service: &str, error: BoxError) -> Response {
    if let Some(limited) = error.downcast_ref::<RateLimited>() {
        let seconds = limited.retry_after().as_secs_f64().ceil().max(1.0) as u64;
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many requests to {service} from this user; retry in {seconds} s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, seconds.into());
        return response;
    }
    if error.is::<TooManyKeys>() {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many users calling {service} at once"),
        )
        .into_response();
    }
    let error = match error.downcast::<PipelineError>() {
        Ok(error) => return pipeline_error(service, *error),
        Err(error) => error,
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(inner) = cause {
        if let Some(error) = inner.downcast_ref::<PipelineError>() {
            if let Some(upstream) = upstream_error(error) {
                if upstream.body.is_object() {
                    return (upstream.status, Json(upstream.body.clone())).into_response();
                }
            }
        }
        if let Some(upstream) = inner.downcast_ref::<UpstreamError>() {
            if upstream.body.is_object() {
                return (upstream.status, Json(upstream.body.clone())).into_response();
            }
        }
        cause = inner.source();
    }
    ApiError::unavailable(format!("{service} unavailable: {error}")).into_response()
}

/// Forwards a call through a gateway client and answers with the
/// service's status and body.
async fn forward_guarded(
    client: &GatewayClient,
    service: &str,
    call: ApiCall,
) -> Result<Response, ApiError> {
    Ok(match client.clone().oneshot(call).await {
        Ok(reply) => (reply.status, Json(reply.body)).into_response(),
        Err(error) => gateway_error(service, error),
    })
}

/// Sends a call through a service's pipeline; its answer (any status) or
/// the gateway's error response.
async fn send(
    client: &PipelinedClient,
    service: &str,
    call: ApiCall,
) -> Result<JsonReply, Response> {
    client
        .clone()
        .oneshot(call)
        .await
        .map_err(|error| pipeline_error(service, error))
}

#[derive(Deserialize)]
struct SignUp {
    email: String,
    name: String,
    password: String,
}

async fn sign_up(State(this): State<Arc<Gateway>>, body: Bytes) -> Result<Response, ApiError> {
    let request: SignUp = parse(&body)?;
    let user = this
        .users
        .create_user(CreateUserRequest {
            email: request.email,
            name: request.name,
            password: request.password,
        })
        .await
        .map_err(grpc_error)?;
    Ok((StatusCode::CREATED, Json(user_json(user))).into_response())
}

#[derive(Deserialize)]
struct LogIn {
    email: String,
    password: String,
}

async fn log_in(State(this): State<Arc<Gateway>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let request: LogIn = parse(&body)?;
    let user = this
        .users
        .login(LoginRequest {
            email: request.email,
            password: request.password,
        })
        .await
        .map_err(grpc_error)?;
    let token = this.token_for(user.id)?;
    Ok(Json(json!({"token": token, "user": user_json(user)})))
}

async fn me(State(this): State<Arc<Gateway>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let user_id = this.authenticate(&headers)?;
    let user = this
        .users
        .get_user(GetUserRequest { user_id })
        .await
        .map_err(grpc_error)?;
    Ok(Json(user_json(user)))
}

async fn products(State(this): State<Arc<Gateway>>) -> Result<Response, ApiError> {
    forward_guarded(
        &this.clients.catalogue,
        "products",
        ApiCall::get("/products"),
    )
    .await
}

async fn product(
    State(this): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::bad_request(format!("product id must be a number, got {id:?}")))?;
    forward_guarded(
        &this.clients.product,
        "products",
        ApiCall::get(format!("/products/{id}")),
    )
    .await
}

#[derive(Deserialize)]
struct PlaceOrder {
    items: Vec<super::inventory::Line>,
}

async fn place_order(
    State(this): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user_id = this.authenticate(&headers)?;
    let request: PlaceOrder = parse(&body)?;
    let call = ApiCall::post(
        "/orders",
        json!({"user_id": user_id, "items": request.items}),
    );
    forward_guarded(&this.clients.place_orders, "orders", call).await
}

async fn order(
    State(this): State<Arc<Gateway>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let user_id = this.authenticate(&headers)?;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(ApiError::bad_request("malformed order id"));
    }
    let reply = match send(
        &this.clients.orders,
        "orders",
        ApiCall::get(format!("/orders/{id}")),
    )
    .await
    {
        Ok(reply) => reply,
        Err(response) => return Ok(response),
    };
    // Another user's order does not exist for this one.
    if reply.status.is_success() && reply.body["user_id"].as_i64() != Some(user_id) {
        return Err(ApiError::not_found(format!("no order {id}")));
    }
    Ok((reply.status, Json(reply.body)).into_response())
}
