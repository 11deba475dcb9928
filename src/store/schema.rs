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
    resources (res_type, res_id) {
        res_type -> Text,
        res_id -> Text,
        version -> BigInt,
        last_updated -> BigInt,
        deleted -> SmallInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(resource_history, resources);
