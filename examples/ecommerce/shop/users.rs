//! The users service over gRPC (`GetUser`, `CreateUser`, `Login`), with
//! its own database; passwords are hashed with Argon2id (light parameters,
//! so that the story stays fast in a debug build). It also answers HTTP/1
//! `GET /health` on the same port, for the registry's health check.

use std::sync::Arc;
use std::time::SystemTime;

use argon2::{Algorithm, Argon2, Params, Version};
use axum::Json;
use axum::routing::get;
use serde_json::json;
use tonic::{Request, Response, Status};

use super::db::{self, Db};
use super::proto::users_server::{Users, UsersServer};
use super::proto::{CreateUserRequest, GetUserRequest, LoginRequest, User};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    salt BLOB NOT NULL,
    password_hash BLOB NOT NULL,
    created_at TEXT NOT NULL
);";

/// The running service.
pub struct UsersService {
    db: Db,
}

impl UsersService {
    /// Opens the database at `path`.
    pub fn open(path: &std::path::Path) -> Result<Arc<Self>, rusqlite::Error> {
        Ok(Arc::new(Self {
            db: db::open(path, SCHEMA)?,
        }))
    }

    /// The gRPC service, the gRPC health service (grpc.health.v1, which
    /// the registry checks: the server as a whole, `""`, is SERVING) and
    /// `/health`, as one router (HTTP/2 for gRPC, HTTP/1 for `/health`).
    pub fn router(self: &Arc<Self>) -> axum::Router {
        let (_reporter, health) = tonic_health::server::health_reporter();
        tonic::service::Routes::new(UsersServer::from_arc(Arc::clone(self)))
            .add_service(health)
            .into_axum_router()
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
    }

    fn find(&self, sql: &str, key: &dyn rusqlite::ToSql) -> Result<Option<UserRow>, Status> {
        let db = self.db.lock();
        match db.query_row(sql, [key], |row| {
            Ok((
                User {
                    id: row.get(0)?,
                    email: row.get(1)?,
                    name: row.get(2)?,
                    created_at: row.get(5)?,
                },
                row.get::<_, Vec<u8>>(3)?,
                row.get::<_, Vec<u8>>(4)?,
            ))
        }) {
            Ok(found) => Ok(Some(found)),
            Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
            Err(error) => Err(Status::internal(format!("users database: {error}"))),
        }
    }
}

const COLUMNS: &str = "id, email, name, salt, password_hash, created_at";

/// A user, its salt and its password hash.
type UserRow = (User, Vec<u8>, Vec<u8>);

/// Argon2id with 1 MiB of memory and one pass: light enough for a debug
/// build; a real service uses the defaults (19 MiB, two passes).
fn hash_password(password: &str, salt: &[u8]) -> Result<Vec<u8>, Status> {
    let params = Params::new(1024, 1, 1, Some(32))
        .map_err(|error| Status::internal(format!("argon2 parameters: {error}")))?;
    let mut out = vec![0; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password.as_bytes(), salt, &mut out)
        .map_err(|error| Status::internal(format!("argon2: {error}")))?;
    Ok(out)
}

/// Hashes off the async threads.
async fn hash_blocking(password: String, salt: Vec<u8>) -> Result<Vec<u8>, Status> {
    tokio::task::spawn_blocking(move || hash_password(&password, &salt))
        .await
        .map_err(|error| Status::internal(format!("hashing task: {error}")))?
}

/// Compares without stopping at the first difference.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl Users for UsersService {
    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let id = request.into_inner().user_id;
        match self.find(&format!("SELECT {COLUMNS} FROM users WHERE id = ?1"), &id)? {
            Some((user, _, _)) => Ok(Response::new(user)),
            None => Err(Status::not_found(format!("no user {id}"))),
        }
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let request = request.into_inner();
        let email = request.email.trim().to_lowercase();
        if request.name.trim().is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
        }
        if !email.contains('@') {
            return Err(Status::invalid_argument("email must contain '@'"));
        }
        if request.password.chars().count() < 8 {
            return Err(Status::invalid_argument(
                "password must have at least 8 characters",
            ));
        }
        let salt: [u8; 16] = rand::random();
        let hash = hash_blocking(request.password, salt.to_vec()).await?;
        let created_at = httpdate::fmt_http_date(SystemTime::now());
        let inserted = self.db.lock().execute(
            "INSERT INTO users (email, name, salt, password_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (email) DO NOTHING",
            rusqlite::params![email, request.name.trim(), salt.to_vec(), hash, created_at],
        );
        match inserted {
            Ok(0) => {
                return Err(Status::already_exists(format!(
                    "{email} is already registered"
                )));
            }
            Ok(_) => {}
            Err(error) => return Err(Status::internal(format!("users database: {error}"))),
        }
        match self.find(
            &format!("SELECT {COLUMNS} FROM users WHERE email = ?1"),
            &email,
        )? {
            Some((user, _, _)) => {
                tracing::info!(user = user.id, "user created");
                Ok(Response::new(user))
            }
            None => Err(Status::internal("the new user is gone")),
        }
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<User>, Status> {
        let request = request.into_inner();
        let email = request.email.trim().to_lowercase();
        let refused = || Status::unauthenticated("wrong email or password");
        let Some((user, salt, expected)) = self.find(
            &format!("SELECT {COLUMNS} FROM users WHERE email = ?1"),
            &email,
        )?
        else {
            return Err(refused());
        };
        let hash = hash_blocking(request.password, salt).await?;
        if same_bytes(&hash, &expected) {
            Ok(Response::new(user))
        } else {
            Err(refused())
        }
    }
}

/// The channel under the client; its error is a concrete type (a
/// `Status` naming the stage that failed), as tonic's generated client
/// futures need one to be `Send` inside handlers.
type GrpcChannel = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Status,
>;

type Reply = std::pin::Pin<Box<dyn std::future::Future<Output = Result<User, Status>> + Send>>;

/// The users service's gRPC client as the other services hold it: a
/// resilience pipeline over a balancer of tonic channels, one per healthy
/// instance found through discovery.
#[derive(Clone)]
pub struct UsersGrpc {
    client: super::proto::users_client::UsersClient<GrpcChannel>,
}

impl UsersGrpc {
    /// `GetUser`.
    pub fn get_user(&self, request: GetUserRequest) -> Reply {
        let mut client = self.client.clone();
        Box::pin(async move { Ok(client.get_user(request).await?.into_inner()) })
    }

    /// `CreateUser`.
    pub fn create_user(&self, request: CreateUserRequest) -> Reply {
        let mut client = self.client.clone();
        Box::pin(async move { Ok(client.create_user(request).await?.into_inner()) })
    }

    /// `Login`.
    pub fn login(&self, request: LoginRequest) -> Reply {
        let mut client = self.client.clone();
        Box::pin(async move { Ok(client.login(request).await?.into_inner()) })
    }
}

/// Builds a [`UsersGrpc`] client through `pipeline` (no retry: gRPC
/// requests are streams, not copied).
pub fn users_grpc(
    registry: &dyn palisade::discovery::Registry,
    // A circuit breaker and a timeout (each stage is in the pipeline's type).
    pipeline: palisade::pipeline::Pipeline<
        palisade::pipeline::Identity,
        palisade::pipeline::BreakerStage,
        palisade::pipeline::Identity,
        palisade::pipeline::TimeoutStage,
    >,
    seed: u64,
) -> Result<UsersGrpc, palisade::BoxError> {
    use palisade::BoxError;
    use palisade::discovery::{Balance, BalanceConfig, Instance, Picker, make_fn};
    use tower::{ServiceBuilder, ServiceExt};

    let make = make_fn(|instance: &Instance| {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", instance.address()))?
                .connect_timeout(std::time::Duration::from_millis(500));
        Ok::<_, BoxError>(endpoint.connect_lazy())
    });
    let config = BalanceConfig::builder()
        .picker(Picker::RoundRobin)
        .rng_seed(seed)
        .build()?;
    let balance = Balance::new("users", registry, make, config)?;
    let service = ServiceBuilder::new()
        // The W3C trace context of the request being served, as metadata.
        .map_request(|mut request: http::Request<tonic::body::Body>| {
            if let Some(value) = super::edge::outgoing().and_then(|v| v.parse().ok()) {
                request
                    .headers_mut()
                    .insert(super::edge::TRACEPARENT, value);
            }
            request
        })
        .layer(pipeline)
        .service(balance)
        .map_err(|error: palisade::pipeline::PipelineError| {
            Status::unavailable(format!("users unavailable: {error}"))
        });
    Ok(UsersGrpc {
        client: super::proto::users_client::UsersClient::new(
            tower::util::BoxCloneSyncService::new(service),
        ),
    })
}
