//! The OpenAPI document served at `/openapi.json`.
//!
//! Owns [`document`]: utoipa builds it from the handlers' `#[utoipa::path]`
//! annotations and the request and response types, so it cannot drift from
//! the code; the envelope's schema is the one `herald::schema` generates
//! (the checked-in `schema/envelope.v1.json`), added as the `Envelope`
//! component. The e2e tests validate the server's responses against it.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{catalog, dead_letters, error, health, inspect, message, publish, schemas, slo};

#[derive(OpenApi)]
#[openapi(
    info(title = "herald", description = "herald's HTTP gateway: publish, call, dead letters, operations. Errors carry a stable `code`."),
    paths(
        publish::publish, publish::call, inspect::topics, inspect::replay, inspect::groups,
        dead_letters::list, dead_letters::show, dead_letters::replay_one, dead_letters::replay,
        dead_letters::purge_one, dead_letters::purge,
        health::healthz, health::readyz, health::metrics, slo::status,
        schemas::list, schemas::register, schemas::show, schemas::version, schemas::check, schemas::delete,
        catalog::asyncapi,
    ),
    components(schemas(
        error::ErrorBody, message::MessageIn, message::PublishResponse, message::Published,
        dead_letters::DeadLetterView, dead_letters::DeadLetterList, dead_letters::Replayed, dead_letters::Purged,
        health::Health, EnvelopeSchema, inspect::TopicView, inspect::TopicList, inspect::Page,
        inspect::GroupView, inspect::GroupTopicView, inspect::PartitionView, inspect::MemberView, inspect::GroupList, slo::SloView, slo::SloStatus,
        schemas::SubjectView, schemas::VersionView, schemas::SubjectList, schemas::RegisterIn, schemas::Registered,
        schemas::CheckIn, schemas::BreakingView, schemas::Checked,
    )),
    modifiers(&Security)
)]
struct Api;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, as JSON.
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(Api::openapi()).expect("the OpenAPI document serializes");
    doc["components"]["schemas"]["Envelope"] = embedded_envelope_schema();
    doc
}

/// The envelope schema as a component: without its own `$id` and `$schema`,
/// its `#/$defs/…` references rewritten to point inside the document.
fn embedded_envelope_schema() -> serde_json::Value {
    let text = herald::schema::envelope_v1()
        .to_string()
        .replace("\"#/$defs/", "\"#/components/schemas/Envelope/$defs/");
    let mut schema: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
    if let Some(o) = schema.as_object_mut() {
        o.remove("$id");
        o.remove("$schema");
    }
    schema
}

/// Stands for `herald::Envelope` in annotations: a reference to the
/// `Envelope` component, whose schema [`document`] fills in.
pub struct EnvelopeSchema;

impl utoipa::PartialSchema for EnvelopeSchema {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new().into()
    }
}

impl utoipa::ToSchema for EnvelopeSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "Envelope".into()
    }
}
