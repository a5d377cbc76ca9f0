//! The Calendar Service of DESIGN.md §1: audience `event`, one scope per
//! operation.

use axum::Json;
use axum::routing::get;
use clap::Parser;
use serde_json::{Value, json};
use sigil_example_resource_server::{Args, Caller, Denied, serve};

async fn list_events(caller: Caller) -> Result<Json<Value>, Denied> {
    caller.require("event.view")?;
    Ok(Json(json!({
        "events": [{ "id": 1, "title": "Planning" }],
        "caller": caller.0.client_id,
    })))
}

async fn create_event(caller: Caller) -> Result<Json<Value>, Denied> {
    caller.require("event.create")?;
    Ok(Json(json!({ "created": 2, "caller": caller.0.client_id })))
}

async fn delete_event(caller: Caller) -> Result<Json<Value>, Denied> {
    caller.require("event.delete")?;
    Ok(Json(json!({ "deleted": 1, "caller": caller.0.client_id })))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let router = axum::Router::new()
        .route("/events", get(list_events).post(create_event))
        .route("/events/1", axum::routing::delete(delete_event));
    serve(args, "calendar-service", router).await
}
