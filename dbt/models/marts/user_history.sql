-- Feature table: a user's behaviour history as of each of their interactions. The row stamped with an
-- interaction's event_timestamp holds the K interactions *before* it, so a point-in-time join at a sample's
-- timestamp returns exactly that sample's history and never its own rating.
select
    user_id,
    event_timestamp,
    history_item_ids,
    history_categories,
    history_brands,
    history_ratings,
    len(history_item_ids) as history_length
from {{ ref('int_interaction_histories') }}
order by user_id, event_timestamp
