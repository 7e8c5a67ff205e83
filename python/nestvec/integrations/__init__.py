"""Framework adapters (optional extras): ``nestvec.integrations.langchain``
(``pip install 'nestvec[langchain]'``) and ``nestvec.integrations.llama_index``
(``pip install 'nestvec[llama-index]'``). Importing nestvec never imports them."""
