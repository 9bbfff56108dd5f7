//! The API's OpenAPI 3.1 document, made from the code that answers it.
//!
//! Every route is registered through [`route`], which takes the method and path from the
//! handler's `#[utoipa::path]` description, so a route cannot be served without being
//! described, nor described under another method or path than it is served on
//! (`clippy.toml` forbids registering a route any other way). [`finish`] then adds what every
//! route shares: problem+json errors, the correlation id, conditional `GET`, bearer tokens.

use std::sync::Arc;

use axum::Json;
use axum::handler::Handler;
use axum::response::IntoResponse;
use axum::routing::MethodFilter;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HttpMethod, ObjectBuilder, OpenApi, Ref, Required, ResponseBuilder, Type,
};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::{CORRELATION_HEADER, Problem};

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The route that handler `H` answers, at the method and path its description `P` (the
/// `__path_<handler>` type `#[utoipa::path]` makes) names, with the schemas it refers to.
pub fn route<P, S, H, T>(handler: H) -> UtoipaMethodRouter<S>
where
    P: utoipa::Path + utoipa::__dev::SchemaReferences,
    H: Handler<T, S>,
    S: Clone + Send + Sync + 'static,
    T: 'static,
{
    let mut schemas = Vec::new();
    P::schemas(&mut schemas);
    let methods = P::methods();
    let filter = methods
        .iter()
        .map(|method| match method {
            HttpMethod::Get => MethodFilter::GET,
            HttpMethod::Post => MethodFilter::POST,
            HttpMethod::Put => MethodFilter::PUT,
            HttpMethod::Delete => MethodFilter::DELETE,
            HttpMethod::Patch => MethodFilter::PATCH,
            HttpMethod::Head => MethodFilter::HEAD,
            HttpMethod::Options => MethodFilter::OPTIONS,
            HttpMethod::Trace => MethodFilter::TRACE,
        })
        .reduce(MethodFilter::or);
    let Some(filter) = filter else {
        // A description without a method is a programming error found at start-up.
        panic!("the description of route {} names no method", P::path());
    };
    let mut paths = utoipa::openapi::path::Paths::new();
    paths.add_path_operation(P::path(), methods, P::operation());
    #[allow(clippy::disallowed_methods)] // the one place a route is registered
    let method_router = axum::routing::on(filter, handler);
    (schemas, paths, method_router)
}

/// The router of `api` with `GET /openapi.json` added, serving `api` after [`finish`].
pub fn serve_document<S>(api: OpenApiRouter<S>, title: &str, version: &str) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let api = api.routes(route::<__path_document, S, _, _>(document));
    let (router, described) = api.split_for_parts();
    let described = Arc::new(finish(described, title, version));
    router.layer(axum::Extension(described))
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object))
)]
async fn document(axum::Extension(api): axum::Extension<Arc<OpenApi>>) -> impl IntoResponse {
    Json(api.as_ref().clone())
}

/// `api` with what every route shares: a `default` problem+json answer, the correlation id
/// (taken and echoed), `If-None-Match` and 304 on `GET`, and bearer tokens (every route but
/// those that say `security(())` may need one, when the server has tokens configured).
pub fn finish(mut api: OpenApi, title: &str, version: &str) -> OpenApi {
    api.info.title = title.to_owned();
    api.info.version = version.to_owned();
    api.info.description = Some(
        "Errors are RFC 9457 problem+json. With an auth file, queries need a token of role \
         read, commands write, and the operator's routes admin."
            .to_owned(),
    );
    let components = api.components.get_or_insert_with(Default::default);
    components.schemas.insert("Problem".to_owned(), Problem::schema());
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    let problem = ResponseBuilder::new()
        .description("An error, as RFC 9457 problem details.")
        .content(
            PROBLEM_JSON,
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .build();
    let correlation = HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some("The request's correlation id, given or made."))
        .build();
    for item in api.paths.paths.values_mut() {
        let mut operations: Vec<(bool, &mut Operation)> = Vec::new();
        if let Some(get) = item.get.as_mut() {
            operations.push((true, get));
        }
        for operation in [&mut item.post, &mut item.put, &mut item.patch, &mut item.delete] {
            if let Some(operation) = operation.as_mut() {
                operations.push((false, operation));
            }
        }
        for (is_get, operation) in operations {
            let parameters = operation.parameters.get_or_insert_with(Vec::new);
            parameters.push(header_parameter(
                CORRELATION_HEADER.as_str(),
                "Ties the log lines and events of this request together; made when absent.",
            ));
            if is_get {
                parameters.push(header_parameter(
                    "If-None-Match",
                    "Answered 304 without a body when it names the answer's ETag.",
                ));
                operation.responses.responses.insert(
                    "304".to_owned(),
                    ResponseBuilder::new()
                        .description("Not modified: the ETag still holds.")
                        .build()
                        .into(),
                );
            }
            operation
                .responses
                .responses
                .entry("default".to_owned())
                .or_insert_with(|| problem.clone().into());
            for response in operation.responses.responses.values_mut() {
                if let utoipa::openapi::RefOr::T(response) = response {
                    response
                        .headers
                        .insert(CORRELATION_HEADER.as_str().to_owned(), correlation.clone());
                }
            }
            if operation.security.is_none() {
                operation.security = Some(vec![
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                    SecurityRequirement::default(),
                ]);
            }
        }
    }
    api
}

fn header_parameter(name: &str, description: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(String::schema()))
        .build()
}

impl utoipa::PartialSchema for Problem {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        ObjectBuilder::new()
            .property(
                "type",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("Names the kind of problem; stable for scripts.")),
            )
            .required("type")
            .property("title", String::schema())
            .required("title")
            .property("status", ObjectBuilder::new().schema_type(Type::Integer))
            .required("status")
            .property(
                "detail",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("What was wrong, with which field or value.")),
            )
            .required("detail")
            .into()
    }
}

impl ToSchema for Problem {}
