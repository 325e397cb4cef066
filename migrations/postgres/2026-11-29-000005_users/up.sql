-- Dashboard users. role: admin | manager | viewer; a manager may be linked to an owner (their
-- own customers). Passwords are argon2id PHC strings. failed_logins and locked_until throttle
-- password guessing.
CREATE TABLE users (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    owner_id BIGINT,
    locale TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until TIMESTAMP
);

-- Secrets the application generates for itself (the session cookie key), shared by replicas.
CREATE TABLE app_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
