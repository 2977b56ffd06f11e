{#- The interactions a prompt shows, oldest first, as a list of structs; `alias` is an int_interactions row. -#}
{% macro prompt_history(alias) -%}
    list(
        {
            'item_id': {{ alias }}.item_id,
            'title': {{ alias }}.title,
            'release_year': {{ alias }}.release_year,
            'category': {{ alias }}.category,
            'brand': {{ alias }}.brand,
            'rating': {{ alias }}.rating
        }
        order by {{ alias }}.position
    )
{%- endmacro %}
