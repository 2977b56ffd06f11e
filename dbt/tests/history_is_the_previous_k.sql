-- A sample's history is exactly its K previous positions (fewer only at the start of a user's sequence).
select samples.sample_id, samples.history_length
from {{ ref('ctr_samples') }} as samples
where samples.history_length != least(samples.position, {{ var('history_length') }})
