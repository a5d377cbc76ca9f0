//! The File Service of DESIGN.md §1: audience `file`, one scope per
//! operation.

use axum::Json;
use axum::routing::get;
use clap::Parser;
use serde_json::{Value, json};
use sigil_example_resource_server::{Args, Caller, Denied, serve};

async fn list_files(caller: Caller) -> Result<Json<Value>, Denied> {
    caller.require("file.view")?;
    Ok(Json(
        json!({ "files": ["report.pdf"], "caller": caller.0.client_id }),
    ))
}

async fn upload_file(caller: Caller) -> Result<Json<Value>, Denied> {
    caller.require("file.create")?;
    Ok(Json(
        json!({ "uploaded": "new.pdf", "caller": caller.0.client_id }),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let router = axum::Router::new().route("/files", get(list_files).post(upload_file));
    serve(args, "file-service", router).await
}
