//! The database schema, identical on SQLite and PostgreSQL (only shared column types are used).
//! Mirrors `migrations/{sqlite,postgres}`; a test checks both backends agree with it.

diesel::table! {
    owners (id) {
        id -> BigInt,
        email -> Text,
        name -> Text,
        locale -> Text,
        source -> Text,
        external_id -> Nullable<Text>,
        import_run_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    import_runs (id) {
        id -> BigInt,
        source -> Text,
        kind -> Text,
        origin -> Text,
        status -> Text,
        started_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
        rows_read -> BigInt,
        rows_written -> BigInt,
        rows_unchanged -> BigInt,
        rows_rejected -> BigInt,
        customers_created -> BigInt,
        unused_columns -> Text,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    import_rejects (id) {
        id -> BigInt,
        import_run_id -> BigInt,
        origin -> Text,
        line -> BigInt,
        field -> Nullable<Text>,
        reason -> Text,
        raw_record -> Text,
    }
}

diesel::table! {
    customers (id) {
        id -> BigInt,
        source -> Text,
        external_id -> Text,
        name -> Text,
        contact_name -> Nullable<Text>,
        contact_email -> Nullable<Text>,
        contact_phone -> Nullable<Text>,
        owner_id -> Nullable<BigInt>,
        created_on -> Nullable<Date>,
        prospect_rating -> Nullable<Integer>,
        attributes -> Text,
        import_run_id -> Nullable<BigInt>,
        deleted_at -> Nullable<Timestamp>,
        deleted_reason -> Nullable<Text>,
    }
}

diesel::table! {
    orders (id) {
        id -> BigInt,
        source -> Text,
        external_id -> Text,
        customer_id -> BigInt,
        order_date -> Date,
        amount_minor -> BigInt,
        cost_minor -> Nullable<BigInt>,
        currency -> Text,
        quantity -> Nullable<BigInt>,
        import_run_id -> Nullable<BigInt>,
        deleted_at -> Nullable<Timestamp>,
        deleted_reason -> Nullable<Text>,
    }
}

diesel::table! {
    invoices (id) {
        id -> BigInt,
        source -> Text,
        external_id -> Text,
        customer_id -> BigInt,
        order_external_id -> Nullable<Text>,
        issued_on -> Date,
        due_on -> Date,
        amount_minor -> BigInt,
        currency -> Text,
        paid_on -> Nullable<Date>,
        import_run_id -> Nullable<BigInt>,
        deleted_at -> Nullable<Timestamp>,
        deleted_reason -> Nullable<Text>,
    }
}

diesel::table! {
    activities (id) {
        id -> BigInt,
        source -> Text,
        external_id -> Text,
        customer_id -> BigInt,
        owner_id -> Nullable<BigInt>,
        kind -> Text,
        occurred_at -> Timestamp,
        note -> Nullable<Text>,
        import_run_id -> Nullable<BigInt>,
        deleted_at -> Nullable<Timestamp>,
        deleted_reason -> Nullable<Text>,
    }
}

diesel::table! {
    grading_runs (id) {
        id -> BigInt,
        period -> Text,
        status -> Text,
        policy_hash -> Text,
        policy -> Text,
        started_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
        customers -> BigInt,
        graded -> BigInt,
        tier_changes -> BigInt,
        timings -> Text,
        summary -> Nullable<Text>,
        error -> Nullable<Text>,
        predictive -> Nullable<Text>,
        predictive_error -> Nullable<Text>,
    }
}

diesel::table! {
    grading_periods (period) {
        period -> Text,
        run_id -> BigInt,
        published_at -> Timestamp,
    }
}

diesel::table! {
    grades (run_id, customer_id) {
        run_id -> BigInt,
        customer_id -> BigInt,
        graded -> Bool,
        recency_days -> Nullable<Integer>,
        frequency -> Integer,
        monetary -> BigInt,
        r_score -> Nullable<Integer>,
        f_score -> Nullable<Integer>,
        m_score -> Nullable<Integer>,
        segment -> Nullable<Text>,
        abc_class -> Nullable<Text>,
        credit_score -> Nullable<Double>,
        credit_grade -> Text,
        profit -> Nullable<BigInt>,
        composite -> Nullable<Double>,
        computed_tier -> Nullable<Text>,
        tier -> Nullable<Text>,
        tier_reason -> Text,
        periods_below -> Integer,
        loyalty -> Nullable<Text>,
        lifecycle -> Text,
        clv -> Nullable<BigInt>,
        tier_since -> Nullable<Date>,
        p_alive -> Nullable<Double>,
        expected_purchases_90d -> Nullable<Double>,
        expected_purchases_12m -> Nullable<Double>,
        expected_order_value -> Nullable<BigInt>,
        clv_model -> Nullable<BigInt>,
    }
}

diesel::table! {
    grade_explanations (run_id, customer_id) {
        run_id -> BigInt,
        customer_id -> BigInt,
        explanation -> Text,
    }
}

// PostgreSQL only: the bare tables a run loads before they become its partitions.
diesel::table! {
    grades_load (run_id, customer_id) {
        run_id -> BigInt,
        customer_id -> BigInt,
        graded -> Bool,
        recency_days -> Nullable<Integer>,
        frequency -> Integer,
        monetary -> BigInt,
        r_score -> Nullable<Integer>,
        f_score -> Nullable<Integer>,
        m_score -> Nullable<Integer>,
        segment -> Nullable<Text>,
        abc_class -> Nullable<Text>,
        credit_score -> Nullable<Double>,
        credit_grade -> Text,
        profit -> Nullable<BigInt>,
        composite -> Nullable<Double>,
        computed_tier -> Nullable<Text>,
        tier -> Nullable<Text>,
        tier_reason -> Text,
        periods_below -> Integer,
        loyalty -> Nullable<Text>,
        lifecycle -> Text,
        clv -> Nullable<BigInt>,
        tier_since -> Nullable<Date>,
        p_alive -> Nullable<Double>,
        expected_purchases_90d -> Nullable<Double>,
        expected_purchases_12m -> Nullable<Double>,
        expected_order_value -> Nullable<BigInt>,
        clv_model -> Nullable<BigInt>,
    }
}

diesel::table! {
    grade_explanations_load (run_id, customer_id) {
        run_id -> BigInt,
        customer_id -> BigInt,
        explanation -> Text,
    }
}

diesel::table! {
    outbox (id) {
        id -> BigInt,
        dedupe_key -> Text,
        kind -> Text,
        owner_id -> Nullable<BigInt>,
        recipient -> Text,
        subject -> Text,
        body_text -> Text,
        body_html -> Text,
        message_id -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    notification_events (id) {
        id -> BigInt,
        kind -> Text,
        period -> Text,
        run_id -> BigInt,
        created_at -> Timestamp,
        processed_at -> Nullable<Timestamp>,
        outcome -> Nullable<Text>,
    }
}

diesel::table! {
    job_runs (id) {
        id -> BigInt,
        job -> Text,
        scheduled_for -> Timestamp,
        trigger -> Text,
        status -> Text,
        replica -> Text,
        fence -> Integer,
        lease_until -> Timestamp,
        started_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
        args -> Text,
        outcome -> Nullable<Text>,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    job_requests (id) {
        id -> BigInt,
        job -> Text,
        args -> Text,
        requested_by -> Text,
        requested_at -> Timestamp,
        claimed_at -> Nullable<Timestamp>,
        run_id -> Nullable<BigInt>,
    }
}

diesel::table! {
    job_probes (id) {
        id -> BigInt,
        job -> Text,
        scheduled_for -> Timestamp,
        run_id -> BigInt,
        replica -> Text,
        written_at -> Timestamp,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        username -> Text,
        password_hash -> Text,
        role -> Text,
        owner_id -> Nullable<BigInt>,
        locale -> Text,
        created_at -> Timestamp,
        failed_logins -> Integer,
        locked_until -> Nullable<Timestamp>,
    }
}

diesel::table! {
    app_secrets (name) {
        name -> Text,
        value -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    overrides (customer_id) {
        customer_id -> BigInt,
        kind -> Text,
        tier -> Nullable<Text>,
        reason -> Text,
        author -> Text,
        until -> Nullable<Date>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    override_events (id) {
        id -> BigInt,
        customer_id -> BigInt,
        action -> Text,
        tier -> Nullable<Text>,
        reason -> Text,
        author -> Text,
        until -> Nullable<Date>,
        at -> Timestamp,
    }
}

diesel::table! {
    policy_versions (id) {
        id -> BigInt,
        created_at -> Timestamp,
        author -> Text,
        reason -> Text,
        adjustment -> Text,
        previous_hash -> Text,
        policy_hash -> Text,
    }
}

diesel::table! {
    crm_sync_state (source, entity) {
        source -> Text,
        entity -> Text,
        watermark -> Nullable<Timestamp>,
        in_progress -> Bool,
        run_since -> Nullable<Timestamp>,
        run_started -> Nullable<Timestamp>,
        run_cursor -> Nullable<Text>,
        run_max_seen -> Nullable<Timestamp>,
        run_pages -> BigInt,
        updated_at -> Timestamp,
    }
}

diesel::joinable!(import_rejects -> import_runs (import_run_id));
diesel::joinable!(customers -> owners (owner_id));
diesel::joinable!(orders -> customers (customer_id));
diesel::joinable!(invoices -> customers (customer_id));
diesel::joinable!(activities -> customers (customer_id));
diesel::joinable!(grades -> customers (customer_id));
diesel::joinable!(grading_periods -> grading_runs (run_id));
diesel::joinable!(overrides -> customers (customer_id));

diesel::allow_tables_to_appear_in_same_query!(
    owners,
    import_runs,
    import_rejects,
    customers,
    orders,
    invoices,
    activities,
    grading_runs,
    grading_periods,
    grades,
    grade_explanations,
    overrides,
    override_events,
    outbox,
    notification_events,
    job_runs,
    job_requests,
    job_probes,
    users,
    app_secrets,
    policy_versions,
    crm_sync_state,
);
