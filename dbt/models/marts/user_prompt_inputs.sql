-- What a user prompt needs (DESIGN §4): demographics and the last interactions of the LLM history, i.e. the
-- interactions before the user's first CTR sample. event_timestamp is the as-of time of that history: just
-- after its last interaction. Only users with at least one CTR sample are listed.
with shown as (
    select *
    from {{ ref('int_interactions') }}
    where split = 'history'
    qualify row_number() over (partition by user_id order by position desc) <= {{ var('prompt_history_length') }}
)

select
    shown.user_id,
    max(shown.event_timestamp) + interval 1 microsecond as event_timestamp,
    count(*) as history_length,
    {{ prompt_history('shown') }} as history,
    any_value(users.age) as age,
    any_value(users.gender) as gender,
    any_value(users.occupation) as occupation
from shown
left join {{ ref('stg_users') }} as users using (user_id)
where shown.user_id in (select user_id from {{ ref('int_interactions') }} where split != 'history')
group by shown.user_id
order by shown.user_id
