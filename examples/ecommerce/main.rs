//! The palisade e-commerce example: the microservices chapter's shop, every
//! service a real server on its own 127.0.0.1 port with its own SQLite
//! database, built from palisade's layers.
//!
//! ```text
//! cargo run --example ecommerce              # the scripted story, then exit
//! cargo run --example ecommerce -- --serve   # keep it up on 127.0.0.1:8080
//! ```
//!
//! See `--help` and the README's "The e-commerce example" section.

mod shop;

use std::io::IsTerminal;

use palisade::BoxError;
use shop::fault_run::{self, FaultRunConfig};
use shop::scenario::{self, Narrator};
use shop::system::{System, SystemConfig};

const HELP: &str = "\
The palisade e-commerce example: a gateway, users (gRPC), products, inventory,
orders, two payments instances and notifications, each a real server on its
own 127.0.0.1 port with its own SQLite database, found through an embedded
service registry.

USAGE:
    cargo run --example ecommerce [-- OPTIONS]

OPTIONS:
    --serve     Keep the system up with the gateway on 127.0.0.1:8080, list
                every instance's address and print curl commands to try:
                sign-up, login, orders, a trace across the services, the
                payments breaker, hedging (stop with Ctrl-C). Not with
                --faults.
    --seed N    Seed the balancers' pickers and the payments' random faults
                (default 7), so that a run can be replayed; with --faults,
                also the fault plan.
    --faults    Instead of the story, a randomized fault run: 5 rounds of 8
                orders placed at once while, before each round, the seed
                picks each payments instance's faults (down, an error rate,
                added latency, lost replies), lost notification replies,
                once an outage of both (the breaker opens) and once an
                orders executor crash; then the faults are cleared and the
                invariants checked. The same seed gives the same plan;
                outcomes may differ with timing.
    --broker URL
                Carry the order events through RabbitMQ (e.g.
                amqp://127.0.0.1:5672): the orders outbox publishes with
                publisher confirms, notifications consumes with manual
                acks. Default: the outbox relay delivers over HTTP.
    --registry URL
                Register the services in etcd (e.g. etcd://127.0.0.1:2379,
                with leases kept alive instead of HTTP health checks); needs
                `--features etcd`. Default: the embedded registry.
    --help      This text.

The registry checks the users service over gRPC (grpc.health.v1), every
other service over HTTP (/health).

Without --serve, a scripted story runs and is narrated on stdout in numbered
lines; it ends with a summary table and a check of the invariants (exit 1 if
one is broken). Logs go to stderr, filtered by RUST_LOG (default: warnings,
plus the gateway's requests, every service's request spans with their W3C
trace ids, and palisade's state changes).";

struct Options {
    serve: bool,
    seed: u64,
    faults: bool,
    broker: Option<String>,
    registry: Option<String>,
}

fn options() -> Result<Option<Options>, String> {
    let mut options = Options {
        serve: false,
        seed: 7,
        faults: false,
        broker: None,
        registry: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" | "-h" => return Ok(None),
            "--serve" => options.serve = true,
            "--faults" => options.faults = true,
            "--broker" => {
                let url = args.next().ok_or("--broker needs a URL")?;
                if !url.starts_with("amqp://") {
                    return Err(format!("--broker needs an amqp:// URL, got {url:?}"));
                }
                options.broker = Some(url);
            }
            "--registry" => {
                let url = args.next().ok_or("--registry needs a URL")?;
                if !url.starts_with("etcd://") {
                    return Err(format!("--registry needs an etcd:// URL, got {url:?}"));
                }
                options.registry = Some(url);
            }
            "--seed" => {
                let value = args.next().ok_or("--seed needs a number")?;
                options.seed = value
                    .parse()
                    .map_err(|_| format!("--seed needs a number, got {value:?}"))?;
            }
            other => return Err(format!("unknown option {other:?}; see --help")),
        }
    }
    if options.serve && options.faults {
        return Err("--serve and --faults do not go together: --faults runs and exits".into());
    }
    Ok(Some(options))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = match options() {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{HELP}");
            return Ok(());
        }
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Every service's request spans (with their trace ids) too.
                .unwrap_or_else(|_| {
                    "warn,tower_http=info,palisade=info,ecommerce::shop::edge=info".into()
                }),
        )
        .init();

    if options.serve {
        return serve(options.seed, options.broker, options.registry).await;
    }
    let started = std::time::Instant::now();
    let system = System::start(SystemConfig {
        seed: options.seed,
        broker: options.broker,
        registry: options.registry,
        ..SystemConfig::default()
    })
    .await?;
    let mut narrator = Narrator::default();
    let broken = if options.faults {
        fault_run::run(&system, FaultRunConfig::new(options.seed), &mut narrator)
            .await?
            .broken
    } else {
        scenario::run(&system, &mut narrator).await?
    };
    narrator.say(format!("done in {:.1?}", started.elapsed()));
    if !broken.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

async fn serve(
    seed: u64,
    broker: Option<String>,
    registry: Option<String>,
) -> Result<(), BoxError> {
    let system = System::start(SystemConfig {
        seed,
        broker,
        registry,
        gateway_port: 8080,
        ..SystemConfig::default()
    })
    .await?;
    let g = system.gateway;
    let payments = [
        system.instance("payments-1")?,
        system.instance("payments-2")?,
    ];
    let inventory = system.instance("inventory-1")?;
    let notifications = system.instance("notifications-1")?;
    let products = system.instance("products-1")?;
    let order = |extra: &str, product: u32, quantity: u32| {
        format!(
            "curl -s -X POST http://{g}/api/orders -H \"authorization: Bearer $TOKEN\" -H 'content-type: application/json'{extra} \\\n  -d '{{\"items\":[{{\"product_id\":{product},\"quantity\":{quantity}}}]}}'"
        )
    };
    let faults = |address: std::net::SocketAddr, faults: &str| {
        format!(
            "curl -s -X POST http://{address}/admin/faults -H 'content-type: application/json' -d '{faults}'"
        )
    };
    println!("The shop is up; the gateway is http://{g} (Ctrl-C stops it). The instances:");
    for (id, address) in &system.instances {
        println!("    {id:<16} http://{address}");
    }
    println!();
    println!("Try (bash):");
    println!();
    println!("# sign up, log in (the JWT goes to $TOKEN), browse");
    println!(
        "curl -s -X POST http://{g}/api/users -H 'content-type: application/json' \\\n  -d '{{\"email\":\"ann@example.com\",\"name\":\"ann\",\"password\":\"correct-horse\"}}'"
    );
    println!(
        "TOKEN=$(curl -s -X POST http://{g}/api/users/login -H 'content-type: application/json' \\\n  -d '{{\"email\":\"ann@example.com\",\"password\":\"correct-horse\"}}' | sed 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/')"
    );
    println!("curl -s http://{g}/api/products");
    println!();
    println!("# order 2 books (the reply goes to $REPLY), read the order back; no token: 401");
    println!("REPLY=$({}); echo \"$REPLY\"", order("", 1, 2));
    println!(
        "curl -s http://{g}/api/orders/$(echo \"$REPLY\" | sed 's/.*\"id\":\"\\([^\"]*\\)\".*/\\1/') -H \"authorization: Bearer $TOKEN\""
    );
    println!("curl -s -X POST http://{g}/api/orders -d '{{}}'");
    println!();
    println!(
        "# one order's W3C trace: every service it reaches serves it (and logs it on stderr), notifications too"
    );
    println!(
        "{}",
        order(
            " \\\n  -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'",
            5,
            1
        )
    );
    println!("curl -s http://{inventory}/admin/traces | grep -o 4bf92f3577b34da6a3ce929d0e0e4736");
    println!(
        "curl -s http://{notifications}/admin/traces | grep -o 4bf92f3577b34da6a3ce929d0e0e4736"
    );
    println!();
    println!(
        "# both payments instances fail: the first order is retried, then 503; once the breaker is open, orders fail fast"
    );
    println!("{}", faults(payments[0], "{\"down\":true}"));
    println!("{}", faults(payments[1], "{\"down\":true}"));
    println!("for i in 1 2 3; do {}; echo; done", order("", 5, 1));
    println!(
        "curl -s http://{g}/metrics | grep 'palisade_circuit_breaker_state{{name=\"payments\"'"
    );
    println!("{}", faults(payments[0], "{}"));
    println!("{}", faults(payments[1], "{}"));
    println!();
    println!(
        "# products-1 answers 400 ms late: product pages stay fast, hedged to products-2 after 50 ms"
    );
    println!("{}", faults(products, "{\"latency_ms\":400}"));
    println!(
        "for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} in %{{time_total}} s\\n' http://{g}/api/products/$i; done"
    );
    println!("curl -s http://{g}/metrics | grep '^palisade_hedge_wins_total'");
    println!("{}", faults(products, "{}"));
    tokio::signal::ctrl_c().await?;
    Ok(())
}
