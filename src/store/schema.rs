//! Diesel's view of the tables, shared by both backends (their migrations create the same shape).

diesel::table! {
    resource_history (seq) {
        seq -> BigInt,
        res_type -> Text,
        res_id -> Text,
        version -> BigInt,
        last_updated -> BigInt,
        method -> Text,
        deleted -> SmallInt,
        content -> Text,
    }
}

diesel::table! {
    resources (rid) {
        rid -> BigInt,
        res_type -> Text,
        res_id -> Text,
        version -> BigInt,
        last_updated -> BigInt,
        deleted -> SmallInt,
    }
}

diesel::table! {
    idx_string (rid, param) {
        rid -> BigInt,
        param -> Text,
        norm -> Text,
        exact -> Text,
    }
}

diesel::table! {
    idx_token (rid, param) {
        rid -> BigInt,
        param -> Text,
        system -> Text,
        code -> Text,
        text_norm -> Text,
        type_system -> Text,
        type_code -> Text,
    }
}

diesel::table! {
    idx_reference (rid, param) {
        rid -> BigInt,
        param -> Text,
        target_type -> Text,
        target_id -> Text,
        url -> Text,
        ident_system -> Text,
        ident_value -> Text,
    }
}

diesel::table! {
    idx_date (rid, param) {
        rid -> BigInt,
        param -> Text,
        lo -> Nullable<BigInt>,
        hi -> Nullable<BigInt>,
    }
}

diesel::table! {
    idx_number (rid, param) {
        rid -> BigInt,
        param -> Text,
        lo -> Nullable<Double>,
        hi -> Nullable<Double>,
    }
}

diesel::table! {
    idx_quantity (rid, param) {
        rid -> BigInt,
        param -> Text,
        lo -> Nullable<Double>,
        hi -> Nullable<Double>,
        system -> Text,
        code -> Text,
        canon_lo -> Nullable<Double>,
        canon_hi -> Nullable<Double>,
        canon_code -> Text,
    }
}

diesel::table! {
    idx_uri (rid, param) {
        rid -> BigInt,
        param -> Text,
        value -> Text,
    }
}

diesel::table! {
    idx_composite (rid, param) {
        rid -> BigInt,
        param -> Text,
        system1 -> Text,
        code1 -> Text,
        system2 -> Text,
        code2 -> Text,
        text2 -> Text,
        lo2 -> Nullable<Double>,
        hi2 -> Nullable<Double>,
        dlo2 -> Nullable<BigInt>,
        dhi2 -> Nullable<BigInt>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    resource_history,
    resources,
    idx_string,
    idx_token,
    idx_reference,
    idx_date,
    idx_number,
    idx_quantity,
    idx_uri,
    idx_composite,
);

diesel::table! {
    auth_clients (client_id) {
        client_id -> Text,
        jwks -> Text,
        scope -> Text,
        created -> BigInt,
    }
}

diesel::table! {
    auth_assertions (client_id, jti) {
        client_id -> Text,
        jti -> Text,
        expires -> BigInt,
    }
}

diesel::table! {
    audit_block (seq) {
        seq -> BigInt,
        events -> Integer,
        hashes -> Text,
        chain_hash -> Text,
        recorded -> BigInt,
        body -> Binary,
    }
}

diesel::table! {
    audit_materialized (id) {
        id -> Integer,
        seq -> BigInt,
    }
}
