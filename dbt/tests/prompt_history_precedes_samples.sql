-- A user's prompt history is as of a time before each of that user's CTR samples.
select prompts.user_id, prompts.event_timestamp, min(samples.event_timestamp) as first_sample
from {{ ref('user_prompt_inputs') }} as prompts
inner join {{ ref('ctr_samples') }} as samples using (user_id)
group by prompts.user_id, prompts.event_timestamp
having prompts.event_timestamp >= min(samples.event_timestamp)
