-- A refreshed user prompt (the refresh DAG, DESIGN §5): every user with a rating in the refresh interval
-- [starts, ends) gets the columns of user_prompt_inputs, but the history shown is the user's last interactions
-- before the interval's end, whatever their split, and event_timestamp is the interval's end: the knowledge is
-- honest by time, as only samples at or after the end can see it. Empty outside a refresh.
with admitted as (
    select * from {{ ref('int_refresh_interactions') }}
),

refreshed as (
    select distinct user_id from admitted where in_window
),

shown as (
    select *
    from admitted
    where user_id in (select user_id from refreshed)
    qualify row_number() over (partition by user_id order by position desc) <= {{ var('prompt_history_length') }}
)

select
    shown.user_id,
    any_value(shown.refresh_end) as event_timestamp,
    count(*) as history_length,
    {{ prompt_history('shown') }} as history,
    any_value(users.age) as age,
    any_value(users.gender) as gender,
    any_value(users.occupation) as occupation
from shown
left join {{ ref('stg_users') }} as users using (user_id)
group by shown.user_id
order by shown.user_id
