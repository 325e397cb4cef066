//! The OpenAPI 3.1 document of `/api/v1`, served at `/api/openapi.json`, and a page listing it
//! at `/api/docs`. A test calls every path it lists, so the document cannot drift from the
//! routes.

use actix_session::Session;
use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::CurrentUser;

fn query(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": { "type": "string" } })
}

fn path_id(description: &str) -> Value {
    json!({ "name": "id", "in": "path", "required": true, "description": description, "schema": { "type": "integer" } })
}

fn get(summary: &str, parameters: Vec<Value>) -> Value {
    json!({
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": {
                "200": { "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } },
                "401": { "description": "Not logged in" },
                "404": { "description": "No such period or record" }
            }
        }
    })
}

/// A POST operation taking a JSON body (admins only).
fn post(summary: &str, body: &str) -> Value {
    json!({
        "summary": summary,
        "requestBody": { "required": true, "description": body, "content": { "application/json": { "schema": { "type": "object" } } } },
        "responses": {
            "200": { "description": "OK", "content": { "application/json": { "schema": { "type": "object" } } } },
            "201": { "description": "Created" },
            "400": { "description": "The body does not make a valid policy; the error says which setting" },
            "401": { "description": "Not logged in" },
            "403": { "description": "Not an admin" },
            "409": { "description": "A grading run holds the grading lock; try again" }
        }
    })
}

/// The document.
pub fn document() -> Value {
    let period = || {
        query(
            "period",
            "A graded month, e.g. 2026-10 (default: the newest)",
        )
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "tierwise dashboard API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Everything the dashboard pages show, as JSON. Log in at /login; the session cookie authenticates API calls."
        },
        "components": { "securitySchemes": { "session": { "type": "apiKey", "in": "cookie", "name": "tierwise_session" } } },
        "security": [{ "session": [] }],
        "paths": {
            "/api/v1/overview": get("Tier distribution beside the period before, segments, ABC, lifecycle, 12-period trend", vec![period()]),
            "/api/v1/customers": get("A page of graded customers (50, keyset by id)", vec![
                period(),
                query("tier", "Assigned tier, or none"),
                query("from_tier", "Tier in the period before (a migration cell, with tier)"),
                query("segment", "Segment key"),
                query("abc", "ABC class"),
                query("lifecycle", "prospect, new, active, loyal, at_risk or churned"),
                query("owner", "Owner id or email"),
                query("q", "Part of the name, or the exact id"),
                query("overridden", "yes or no"),
                query("after", "The last customer id of the previous page"),
            ]),
            "/api/v1/customers/{id}": get("One customer: grade with explanation, history, override audit trail", vec![path_id("Customer id")]),
            "/api/v1/migrations": get("Tier migration matrix of a period against the one before", vec![period()]),
            "/api/v1/imports": get("Recent import runs with counts", vec![]),
            "/api/v1/imports/{id}/rejects": get("Rejected records of one import run", vec![path_id("Import run id")]),
            "/api/v1/jobs": get("Job definitions with next runs, and recent runs", vec![]),
            "/api/v1/outbox": get("Email outbox: counts by status and recent messages", vec![query("status", "queued, sending, sent or dead")]),
            "/api/v1/policy": policy_path(),
            "/api/v1/policy/what-if": { "post": post(
                "What a policy change would do: the newest period re-graded in memory (nothing is written)",
                "A policy adjustment: {\"weights\": {\"value\": 0.5}, \"tiers\": {\"A\": {\"share\": 0.05}, \"D\": {\"share\": 0.45}}, \"abc_cuts\": [0.7, 0.9]}"
            ) }
        }
    })
}

fn policy_path() -> Value {
    let mut path = get(
        "The grading policy in force, its hash, and the versions applied",
        vec![],
    );
    path["post"] = post(
        "Apply a policy adjustment as a new version (in force from the next grading run)",
        "{\"adjustment\": {…as for what-if…}, \"reason\": \"why\"}",
    );
    path
}

/// `GET /api/openapi.json`
pub async fn openapi(_user: CurrentUser) -> HttpResponse {
    HttpResponse::Ok().json(document())
}

/// `GET /api/docs`: the document as a page.
pub async fn docs(user: CurrentUser, state: web::Data<AppState>, session: Session) -> HttpResponse {
    crate::pages::render(&state, &session, Some(&user), "apidocs.html", document())
}
