from feast import Entity, ValueType

USER = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A rater.")
ITEM = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A movie or a book.")
