-- Feature table: a user's behaviour history as of each of their interactions. The row stamped with an
-- interaction's event_timestamp holds the K interactions *before* it, so a point-in-time join at a sample's
-- timestamp returns exactly that sample's history and never its own rating. One more row per user, just after
-- their last interaction, holds the K latest: what the online store serves as the user's current history.
with latest as (
    select
        user_id,
        max(event_timestamp) + interval 1 microsecond as event_timestamp,
        list(item_id order by position desc)[1:{{ var('history_length') }}] as newest_item_ids,
        list(category order by position desc)[1:{{ var('history_length') }}] as newest_categories,
        list(coalesce(brand, '') order by position desc)[1:{{ var('history_length') }}] as newest_brands,
        list(rating order by position desc)[1:{{ var('history_length') }}] as newest_ratings
    from {{ ref('int_interactions') }}
    group by user_id
),

rows as (
    select user_id, event_timestamp, history_item_ids, history_categories, history_brands, history_ratings
    from {{ ref('int_interaction_histories') }}
    union all
    select
        user_id,
        event_timestamp,
        list_reverse(newest_item_ids),
        list_reverse(newest_categories),
        list_reverse(newest_brands),
        list_reverse(newest_ratings)
    from latest
)

select *, len(history_item_ids) as history_length
from rows
order by user_id, event_timestamp
