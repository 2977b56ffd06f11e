{#- Fails on every combination of `columns` that occurs more than once. -#}
{% test unique_key(model, columns) %}
select {{ columns | join(", ") }}, count(*) as occurrences
from {{ model }}
group by all
having count(*) > 1
{% endtest %}
