-- Every behaviour-history item of a sample was rated by that user strictly before the sample's timestamp.
with history_items as (
    select samples.sample_id, samples.user_id, samples.event_timestamp, unnest(samples.history_item_ids) as item_id
    from {{ ref('ctr_samples') }} as samples
)

select history_items.*
from history_items
where not exists (
    select 1
    from {{ ref('int_interactions') }} as earlier
    where earlier.user_id = history_items.user_id
      and earlier.item_id = history_items.item_id
      and earlier.event_timestamp < history_items.event_timestamp
)
