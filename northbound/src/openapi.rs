//! The OpenAPI document, generated from the handlers and the API model.

use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, Required, Type};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "wfm northbound API", description = "Flows in OpenKilda's v2 shape, topology and operations."),
    paths(
        routes::create_flow, routes::list_flows, routes::get_flow, routes::delete_flow,
        routes::flow_path, routes::flow_history, routes::list_switches, routes::list_links,
        routes::inspect, routes::health, routes::ready, routes::metrics, routes::openapi,
    ),
    modifiers(&Conventions),
)]
struct ApiDoc;

/// What every operation shares: the correlation id header and the bearer scheme.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .parameters
                    .get_or_insert_with(Vec::new)
                    .push(correlation_header());
            }
        }
    }
}

fn correlation_header() -> Parameter {
    ParameterBuilder::new()
        .name("correlation_id")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Carried through every Kafka message and log line of the request and echoed. Any value is accepted: one that is empty, longer than 128 bytes or not printable ASCII is replaced by a generated id.",
        ))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_route_is_documented_and_nothing_else() {
        let doc = document();
        let mut documented: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        let mut served: Vec<&str> = routes::routes().into_iter().map(|(p, _)| p).collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
        let json = serde_json::to_value(&doc).unwrap();
        let schemas = &json["components"]["schemas"];
        for name in [
            "FlowRequest",
            "FlowResponse",
            "MessageError",
            "EndpointBody",
        ] {
            assert!(schemas.get(name).is_some(), "{name} documented");
        }
        assert_eq!(
            json["paths"]["/v2/flows"]["post"]["responses"]["409"]["content"]["application/json"]
                ["schema"]["$ref"],
            "#/components/schemas/MessageError"
        );
    }
}
