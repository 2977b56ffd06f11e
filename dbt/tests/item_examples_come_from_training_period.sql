-- Item prompts' liker and disliker are training-period ratings with the matching label, dated before the prompt.
with examples as (
    select item_id, event_timestamp, liker_user_id as user_id, 1 as label
    from {{ ref('item_prompt_inputs') }} where liker_user_id is not null
    union all
    select item_id, event_timestamp, disliker_user_id, 0
    from {{ ref('item_prompt_inputs') }} where disliker_user_id is not null
)

select examples.*
from examples
where not exists (
    select 1
    from {{ ref('int_interactions') }} as rated
    where rated.user_id = examples.user_id
      and rated.item_id = examples.item_id
      and rated.label = examples.label
      and rated.split in ('history', 'train')
      and rated.event_timestamp < examples.event_timestamp
)
