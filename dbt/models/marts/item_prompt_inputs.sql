-- What an item prompt needs (DESIGN §4): title and attributes, plus one user who liked the item and one who
-- disliked it, each with the interactions they had before rating it. All of it comes from the training period
-- only (the LLM history and train positions; never valid or test): the examples are the earliest such ratings,
-- ties broken by a seeded hash, and the histories shown are the example user's previous training-period
-- interactions (under valid_strategy = fraction a valid rating can fall between them: it is skipped, not shown).
-- Valid is not training period here: it stands for ratings the model has not seen, so knowledge built from it
-- would let the validation labels leak into the features that the epoch is chosen on.
-- event_timestamp is just after the later of the two ratings (or the dataset's start when there is none), so no
-- sample sees knowledge built from its own label.
with interactions as (
    select * from {{ ref('int_interactions') }}
),

training_period as (
    select
        *,
        row_number() over (partition by user_id order by position) as period_rank
    from interactions
    where split in ('history', 'train')
),

examples as (
    select item_id, label, user_id, period_rank, rating, event_timestamp
    from training_period
    qualify row_number() over (
        partition by item_id, label order by event_timestamp, {{ hash_fraction(['user_id']) }}
    ) = 1
),

example_histories as (
    select
        examples.item_id,
        examples.label,
        any_value(examples.user_id) as user_id,
        any_value(examples.rating) as rating,
        any_value(examples.event_timestamp) as event_timestamp,
        {{ prompt_history('before') }} filter (where before.position is not null) as history
    from examples
    left join training_period as before
        on before.user_id = examples.user_id
        and before.period_rank between examples.period_rank - {{ var('prompt_history_length') }}
        and examples.period_rank - 1
    group by examples.item_id, examples.label
)

select
    items.item_id,
    coalesce(
        greatest(liker.event_timestamp, disliker.event_timestamp),
        (select min(event_timestamp) from interactions)
    ) + interval 1 microsecond as event_timestamp,
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
left join example_histories as liker on liker.item_id = items.item_id and liker.label = 1
left join example_histories as disliker on disliker.item_id = items.item_id and disliker.label = 0
where items.item_id in (select item_id from interactions)
order by items.item_id
