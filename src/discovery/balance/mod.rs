//! The balancer: [`Balance`], [`BalanceLayer`], pickers and outlier
//! detection.

mod config;
mod endpoint;
mod future;
mod layer;
mod make;
mod metrics;
mod picker;
mod service;
mod shared;

pub use self::config::{
    BalanceConfig, BalanceConfigBuilder, OutlierDetection, OutlierDetectionBuilder, Picker,
};
pub use self::future::ResponseFuture;
pub use self::layer::BalanceLayer;
pub use self::make::{MakeFn, make_fn};
pub use self::metrics::{BalanceEvent, BalanceEventKind, BalanceMetrics, EndpointMetrics};
pub use self::service::Balance;
