-- One row per CTR sample (positions after the LLM history), with its label, split and behaviour history.
select
    interactions.user_id || ':' || interactions.position as sample_id,
    interactions.user_id,
    interactions.item_id,
    interactions.label,
    interactions.event_timestamp,
    interactions.position,
    interactions.split,
    interactions.category,
    interactions.brand,
    histories.history_item_ids,
    histories.history_categories,
    histories.history_brands,
    histories.history_ratings,
    len(histories.history_item_ids) as history_length
from {{ ref('int_interactions') }} as interactions
inner join {{ ref('int_interaction_histories') }} as histories using (user_id, position)
where interactions.split in ('train', 'valid', 'test')
order by interactions.user_id, interactions.position
