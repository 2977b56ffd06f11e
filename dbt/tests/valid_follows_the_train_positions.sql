-- temporal and last: every valid position of a user comes after every train position of that user (so no train
-- sample's history holds a valid label), and a user has as many as the strategy holds out: one (last), or
-- ceil(valid_fraction * m) of the user's m train-period positions (temporal). fraction scatters them: not checked.
{{ config(enabled=var('valid_strategy') in ['temporal', 'last']) }}

with per_user as (
    select
        user_id,
        max(position) filter (where split = 'train') as last_train,
        min(position) filter (where split = 'valid') as first_valid,
        count(*) filter (where split in ('train', 'valid')) as train_period,
        count(*) filter (where split = 'valid') as valid
    from {{ ref('int_interactions') }}
    group by user_id
)

select *
from per_user
where first_valid <= last_train
    or valid != case
        when train_period = 0 then 0
        {% if var('valid_strategy') == 'temporal' %}
            else ceil(train_period * {{ var('valid_fraction') }}::decimal(18, 9))
        {% else %}
            else 1
        {% endif %}
    end
