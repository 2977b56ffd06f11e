-- A refreshed item prompt (the refresh DAG, DESIGN §5): every item whose first liker or first disliker arrived in
-- the refresh interval [starts, ends) gets the columns of item_prompt_inputs, its examples now drawn from every
-- rating before the interval's end (the earliest liker and disliker, ties broken by a seeded hash, each with the
-- interactions they had before), and event_timestamp is the interval's end. Empty outside a refresh.
with admitted as (
    select * from {{ ref('int_refresh_interactions') }}
),

examples as (
    select item_id, label, user_id, position, rating, in_window, refresh_end
    from admitted
    qualify row_number() over (
        partition by item_id, label order by event_timestamp, {{ hash_fraction(['user_id']) }}
    ) = 1
),

refreshed as (
    -- the item's first liker or its first disliker came in the interval
    select item_id, any_value(refresh_end) as refresh_end
    from examples
    group by item_id
    having bool_or(in_window)
),

example_histories as (
    select
        examples.item_id,
        examples.label,
        any_value(examples.user_id) as user_id,
        any_value(examples.rating) as rating,
        {{ prompt_history('before') }} filter (where before.position is not null) as history
    from examples
    left join admitted as before
        on before.user_id = examples.user_id
        and before.position between examples.position - {{ var('prompt_history_length') }}
        and examples.position - 1
    where examples.item_id in (select item_id from refreshed)
    group by examples.item_id, examples.label
)

select
    items.item_id,
    refreshed.refresh_end as event_timestamp,
    items.title,
    items.release_year,
    items.genres,
    items.category,
    items.brand,
    liker.user_id as liker_user_id,
    liker.rating as liker_rating,
    coalesce(liker.history, []) as liker_history,
    disliker.user_id as disliker_user_id,
    disliker.rating as disliker_rating,
    coalesce(disliker.history, []) as disliker_history
from {{ ref('int_items') }} as items
inner join refreshed using (item_id)
left join example_histories as liker on liker.item_id = items.item_id and liker.label = 1
left join example_histories as disliker on disliker.item_id = items.item_id and disliker.label = 0
order by items.item_id
