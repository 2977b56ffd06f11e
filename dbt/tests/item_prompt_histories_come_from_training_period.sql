-- Every interaction an item prompt shows (its liker's and disliker's histories) is a training-period rating of
-- that user (LLM history or train; never valid or test), rated before the prompt's as-of time.
with shown as (
    select item_id, event_timestamp, liker_user_id as user_id, unnest(liker_history) as interaction
    from {{ ref('item_prompt_inputs') }}
    union all
    select item_id, event_timestamp, disliker_user_id, unnest(disliker_history)
    from {{ ref('item_prompt_inputs') }}
)

select shown.item_id, shown.user_id, shown.interaction.item_id as shown_item_id
from shown
where not exists (
    select 1
    from {{ ref('int_interactions') }} as rated
    where rated.user_id = shown.user_id
      and rated.item_id = shown.interaction.item_id
      and rated.split in ('history', 'train')
      and rated.event_timestamp < shown.event_timestamp
)
