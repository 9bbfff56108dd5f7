//! The application: one store, the command bus over it, the running projections and sagas,
//! and the commands that need more than one aggregate (an order line reads its product's
//! price, an order checks its customer exists, confirming waits for the fulfilment saga).

use std::sync::Arc;
use std::time::Duration;

use strata::saga::Sagas;
use strata::{
    Aggregate, CommandBus, CommandContext, CommandError, CommandOutcome, EventStore,
    IdempotencyStore, Leases, Position, ProjectionHandle, ProjectionRunner, Projections,
    SharedReader, ViewError, ViewManager,
};

use crate::domain::{
    Customer, CustomerCommand, CustomerError, Order, OrderCommand, OrderError, OrderLine,
    OrderStatus, OrdersEvent, Product, ProductCommand, ProductError,
};
use crate::sagas::{FULFILMENT_TABLES, FulfilmentSaga, FulfilmentSettings};
use crate::views;

/// The storage a service runs on, chosen once at start.
pub trait Backend: Send + Sync + 'static {
    /// Where events live, and the idempotency records written with them.
    type Events: EventStore + IdempotencyStore;
    /// Where views and checkpoints live.
    type Views: ViewManager;
    /// Who runs which projection.
    type Leases: Leases;
}

/// The opened stores of a [`Backend`].
pub struct Stores<B: Backend> {
    /// The event store.
    pub events: Arc<B::Events>,
    /// The view manager.
    pub views: Arc<B::Views>,
    /// The projection leases.
    pub leases: Arc<B::Leases>,
}

/// A running orders service.
pub struct App<B: Backend> {
    /// Routes commands to aggregates (shared with the sagas, which send commands too).
    pub bus: Arc<CommandBus<B::Events>>,
    /// Reads views.
    pub views: Arc<B::Views>,
    /// The projections this node runs, sagas included.
    pub projections: Arc<Projections>,
    /// The sagas this node runs.
    pub sagas: Arc<Sagas>,
    /// This node's id, shown by `/health` and as projection owner.
    pub node_id: String,
    /// Begun when the service stops; ends waiting queries at once.
    pub shutdown: strata_http::Shutdown,
    /// The bearer tokens the HTTP API accepts; `None` (the default) checks none.
    pub tokens: Option<Arc<strata_http::Tokens>>,
    /// The HTTP requests and connections counted for `/metrics`.
    pub http_metrics: Arc<strata_http::HttpMetrics>,
    /// How long a query may take beyond the `wait_ms` it asked for.
    pub read_timeout: std::time::Duration,
    /// Whether the node takes no commands (a replica): its command routes answer 405.
    pub read_only: bool,
    /// This node's search index, when it keeps one ([`App::search`]).
    pub search: Option<Arc<strata_search::SearchIndex>>,
    /// Who runs which projection (and delivery).
    leases: Arc<B::Leases>,
}

/// What a node does besides keeping its views.
#[derive(Debug, Clone)]
pub enum Role {
    /// Takes commands, and runs the fulfilment saga with these settings.
    Writer(FulfilmentSettings),
    /// Takes no commands and runs no saga: a replica, whose store a follower fills with
    /// another deployment's log ([`App::follow`]).
    Replica,
}

/// Why a command of the service was refused.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A customer command failed.
    #[error(transparent)]
    Customer(#[from] CommandError<CustomerError>),
    /// A product command failed.
    #[error(transparent)]
    Product(#[from] CommandError<ProductError>),
    /// An order command failed.
    #[error(transparent)]
    Order(#[from] CommandError<OrderError>),
    /// The body names a customer that does not exist.
    #[error("customer {0:?} does not exist")]
    UnknownCustomer(String),
    /// The body names a product that does not exist.
    #[error("product {0:?} does not exist")]
    UnknownProduct(String),
}

/// The event that decided a confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    /// `confirmed` or `cancelled`.
    pub status: OrderStatus,
    /// The deciding event's position.
    pub position: Position,
    /// The order's version after it.
    pub version: strata::Version,
}

/// A requested order line before it is priced.
#[derive(Debug, Clone)]
pub struct LineRequest {
    /// The product.
    pub sku: String,
    /// Units.
    pub qty: i64,
}

/// A request to place an order.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    /// The customer.
    pub customer_id: String,
    /// The lines.
    pub lines: Vec<LineRequest>,
    /// How the customer pays.
    pub payment_method: Option<String>,
    /// Where it goes.
    pub shipping_address: Option<String>,
}

impl<B: Backend> App<B> {
    /// Creates the projections' tables, starts the projections and the fulfilment saga with
    /// its default settings over `stores` (all of them reading the log through one shared
    /// reader) and returns the running service.
    pub async fn start(
        stores: Stores<B>,
        node_id: impl Into<String>,
        bus: strata::BusConfig,
    ) -> Result<Self, ViewError> {
        Self::start_with(stores, node_id, bus, Role::Writer(FulfilmentSettings::default())).await
    }

    /// [`App::start`] in the given role: a writer with the fulfilment saga's settings, or a
    /// replica without the saga.
    pub async fn start_with(
        stores: Stores<B>,
        node_id: impl Into<String>,
        bus: strata::BusConfig,
        role: Role,
    ) -> Result<Self, ViewError> {
        let node_id = node_id.into();
        let runner = ProjectionRunner::new(node_id.clone());
        let (events, views, leases) = (stores.events, stores.views, stores.leases);
        let reader = SharedReader::new(events.clone());
        let mut projections = Projections::new();
        macro_rules! start {
            ($projection:expr) => {{
                let projection = $projection;
                views.prepare(projection.name(), projection.tables(), projection.version()).await?;
                projections.push(runner.spawn_shared(
                    projection,
                    reader.clone(),
                    views.clone(),
                    leases.clone(),
                ));
            }};
        }
        start!(views::customers());
        start!(views::customer_orders());
        start!(views::products());
        start!(views::orders());
        start!(views::sales_daily());
        start!(strata::audit::projection::<OrdersEvent>());
        let bus = Arc::new(CommandBus::new(events, bus));
        let mut sagas = Sagas::new();
        let read_only = match role {
            Role::Writer(fulfilment) => {
                let saga = Arc::new(FulfilmentSaga::new(bus.clone(), fulfilment));
                let (projection, saga) = strata::saga::spawn(
                    &runner,
                    saga,
                    &FULFILMENT_TABLES,
                    reader,
                    views.clone(),
                    leases.clone(),
                )
                .await?;
                projections.push(projection);
                sagas.push(saga);
                false
            }
            Role::Replica => true,
        };
        Ok(Self {
            bus,
            views,
            projections: Arc::new(projections),
            sagas: Arc::new(sagas),
            node_id,
            shutdown: strata_http::Shutdown::new(),
            tokens: None,
            http_metrics: strata_http::HttpMetrics::new(),
            read_timeout: std::time::Duration::from_secs(10),
            read_only,
            search: None,
            leases,
        })
    }

    /// Delivers every event of the log to `outlet`, in order and at least once, on one node
    /// at a time under the lease `name`; listed with the projections. Call it before the
    /// app is shared.
    pub fn deliver<O: strata::Outlet>(
        &mut self,
        name: &'static str,
        outlet: Arc<O>,
    ) -> Result<(), ViewError> {
        let runner = ProjectionRunner::new(self.node_id.clone());
        let handle = runner.spawn_delivery(
            name,
            outlet,
            self.events().clone(),
            self.views.clone(),
            self.leases.clone(),
        );
        self.list(handle)
    }

    /// Copies another deployment's log from `source` into this node's store (which must
    /// have no other writer: start the app as a [`Role::Replica`]), at the positions it had
    /// there; listed with the projections as `name`. Call it before the app is shared.
    pub fn follow<S: strata::Source>(
        &mut self,
        name: &'static str,
        source: S,
    ) -> Result<(), ViewError> {
        let runner = ProjectionRunner::new(self.node_id.clone());
        let handle = runner.spawn_follower(name, source, self.events().clone());
        self.list(handle)
    }

    /// Keeps the orders' search documents in `index`, on this node alone, from the
    /// checkpoint the index holds; listed with the projections as
    /// [`views::ORDER_SEARCH`]. Call it before the app is shared.
    pub fn search(&mut self, index: Arc<strata_search::SearchIndex>) -> Result<(), ViewError> {
        let runner = ProjectionRunner::new(self.node_id.clone());
        let view = Arc::new(strata_search::SearchProjection::new(
            index.clone(),
            views::OrderIndexer::default(),
        ));
        let handle = runner.spawn_local(views::ORDER_SEARCH, view, self.events().clone());
        self.list(handle)?;
        self.search = Some(index);
        Ok(())
    }

    /// Lists `handle` with the projections; stops it if the app is already shared.
    fn list(&mut self, handle: ProjectionHandle) -> Result<(), ViewError> {
        let name = handle.name();
        match Arc::get_mut(&mut self.projections) {
            Some(projections) => {
                projections.push(handle);
                Ok(())
            }
            None => {
                handle.stop();
                let message = format!("{name} must be added before the app is shared");
                Err(ViewError::Backend(message.into()))
            }
        }
    }

    /// The event store.
    pub fn events(&self) -> &Arc<B::Events> {
        self.bus.store()
    }

    /// The running projection `name` (one of [`views::PROJECTIONS`]).
    pub fn projection(&self, name: &str) -> Option<&ProjectionHandle> {
        self.projections.get(name)
    }

    /// Registers a customer.
    pub async fn register_customer(
        &self,
        id: &str,
        name: String,
        email: String,
        context: &CommandContext,
    ) -> Result<CommandOutcome, AppError> {
        let command = CustomerCommand::Register { name, email };
        Ok(self.bus.execute::<Customer>(id, command, context).await?)
    }

    /// Creates a product.
    pub async fn create_product(
        &self,
        sku: &str,
        name: String,
        price_cents: i64,
        context: &CommandContext,
    ) -> Result<CommandOutcome, AppError> {
        let command = ProductCommand::Create { name, price_cents };
        Ok(self.bus.execute::<Product>(sku, command, context).await?)
    }

    /// Adds stock to a product.
    pub async fn restock_product(
        &self,
        sku: &str,
        qty: i64,
        context: &CommandContext,
    ) -> Result<CommandOutcome, AppError> {
        let command = ProductCommand::Restock { qty };
        Ok(self.bus.execute::<Product>(sku, command, context).await?)
    }

    /// Places an order for an existing customer, pricing each line from its product.
    pub async fn place_order(
        &self,
        id: &str,
        request: PlaceOrder,
        context: &CommandContext,
    ) -> Result<CommandOutcome, AppError> {
        if !self.bus.load::<Customer>(&request.customer_id).await?.state.registered {
            return Err(AppError::UnknownCustomer(request.customer_id));
        }
        let mut lines = Vec::with_capacity(request.lines.len());
        for line in request.lines {
            lines.push(self.price(line).await?);
        }
        let command = OrderCommand::Place {
            customer_id: request.customer_id,
            lines,
            payment_method: request.payment_method,
            shipping_address: request.shipping_address,
        };
        Ok(self.bus.execute::<Order>(id, command, context).await?)
    }

    /// Adds a line to a placed order at the product's current price.
    pub async fn add_line(
        &self,
        id: &str,
        line: LineRequest,
        context: &CommandContext,
    ) -> Result<CommandOutcome, AppError> {
        // The addressed order is checked first: a missing order is 404 whatever the body says.
        if self.bus.load::<Order>(id).await?.state.status.is_none() {
            return Err(CommandError::Rejected(OrderError::NotFound).into());
        }
        let line = self.price(line).await?;
        Ok(self.bus.execute::<Order>(id, OrderCommand::AddLine(line), context).await?)
    }

    /// Asks to confirm order `id`, then waits up to `wait` for the fulfilment saga to
    /// confirm or cancel it (less if the service begins to stop). Returns the confirmation
    /// request's outcome and, once decided, the deciding event: `None` if it was not decided
    /// in time.
    pub async fn confirm_order(
        &self,
        id: &str,
        context: &CommandContext,
        wait: Duration,
    ) -> Result<(CommandOutcome, Option<Decided>), AppError> {
        let outcome = self.bus.execute::<Order>(id, OrderCommand::Confirm, context).await?;
        let decided = tokio::select! {
            decided = tokio::time::timeout(wait, self.decided(&outcome)) => decided.ok().flatten(),
            () = self.shutdown.begun() => None,
        };
        Ok((outcome, decided))
    }

    /// The event that decided the confirmation asked by `asked`: the first `OrderConfirmed`
    /// or `OrderCancelled` after it in the order's stream. Waits until the order's view has
    /// moved past the request and is no longer confirming (a read of the view store per
    /// move of the orders projection), then reads the stream once. A view that cannot say
    /// (parked, or missing) is passed over: the stream is read on every move instead.
    /// `None` if a store cannot be read.
    async fn decided(&self, asked: &CommandOutcome) -> Option<Decided> {
        let orders = self.projection("orders")?;
        let requested = asked.position?;
        // The saga's commands decide, at positions not known yet: keep it from resting
        // between its batches while this request waits (on this node; another node's saga
        // rests up to its longest rest per step).
        let _saga = self.projection("fulfilment").map(ProjectionHandle::awaited);
        let mut target = requested;
        loop {
            // Every wait is bounded by the caller's timeout.
            orders.wait_for(target, Duration::from_secs(3600)).await.ok()?;
            // Noted before the reads: they reflect at least `seen`, so a decision applied
            // later moves the projection past it.
            let seen = orders.position();
            let stored =
                self.views.get::<views::OrderView>("orders", &asked.stream.id).await.ok()?;
            let moved_on = match &stored {
                Some(stored) if stored.parked.is_none() => {
                    stored.position >= requested && stored.view.status != OrderStatus::Confirming
                }
                _ => true,
            };
            if moved_on && let Some(decided) = self.deciding_event(asked).await? {
                return Some(decided);
            }
            target = Position(seen.0.max(target.0) + 1);
        }
    }

    /// The first `OrderConfirmed` or `OrderCancelled` after `asked` in the order's stream;
    /// `None` when the store cannot be read.
    async fn deciding_event(&self, asked: &CommandOutcome) -> Option<Option<Decided>> {
        let tail = self.events().read_stream(&asked.stream, asked.version).await.ok()?;
        Some(tail.iter().find_map(|record| {
            let status = match record.event_type.as_str() {
                "OrderConfirmed" => OrderStatus::Confirmed,
                "OrderCancelled" => OrderStatus::Cancelled,
                _ => return None,
            };
            Some(Decided { status, position: record.position, version: record.version })
        }))
    }

    /// Confirms, ships or cancels an order.
    pub async fn change_order(
        &self,
        id: &str,
        command: OrderCommand,
        context: &CommandContext,
    ) -> Result<CommandOutcome, AppError> {
        Ok(self.bus.execute::<Order>(id, command, context).await?)
    }

    async fn price(&self, line: LineRequest) -> Result<OrderLine, AppError> {
        let product = self.bus.load::<Product>(&line.sku).await?;
        if !product.state.created {
            return Err(AppError::UnknownProduct(line.sku));
        }
        Ok(OrderLine { sku: line.sku, qty: line.qty, price_cents: product.state.price_cents })
    }

    /// Stops the projections and sagas; committed batches stay committed.
    pub fn stop(&self) {
        self.sagas.stop();
        self.projections.stop();
    }
}

/// The aggregate types the admin routes accept.
pub const AGGREGATE_TYPES: [&str; 3] = [Customer::TYPE, Product::TYPE, Order::TYPE];
